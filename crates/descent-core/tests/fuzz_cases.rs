//! Mutated and truncated versions of real reference cases, fed to `parse_case`/`load_case` and
//! `run_and_check`: each gives an error or a result, never a panic, an abort or a hang.
//!
//! The runs are seeded (set `PROPTEST_RNG_SEED` to explore other cases) and keep no failure files.

mod common;

use descent_core::replay::{load_case, parse_case, run_and_check};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Real cases of each kind: torch and optax optimizers (factored, per-axis, partitioned, wrapped,
/// matrix-only), schedules (function, plateau, one-cycle, restarts), and files of the other sets
/// whose optimizers or fields the core does not know.
const FILES: &[(&str, &str)] = &[
    ("reference", "optim/torch.sgd.momentum.json"),
    ("reference", "optim/torch.adafactor.default.json"),
    ("reference", "optim/torch.adamw.param_groups.json"),
    ("reference", "optim/torch.muon.default.json"),
    ("reference", "optim/optax.adafactor.json"),
    ("reference", "optim/optax.sm3.json"),
    ("reference", "optim/optax.chain.agc_sgd.json"),
    ("reference", "optim/optax.lookahead_sgd.json"),
    ("reference", "schedules/torch.onecycle_cos.json"),
    ("reference", "schedules/torch.reduce_on_plateau.json"),
    ("reference", "schedules/torch.cosine_warm_restarts.json"),
    ("reference", "schedules/torch.cyclic_triangular2.json"),
    ("reference", "schedules/optax.piecewise_constant.json"),
    ("reference-r2", "optim/optax.adamw.mask.json"),
    ("reference-r2", "optim/torch.lbfgs.default.rosenbrock.json"),
    ("reference-r2", "optim/po.sam.adaptive.softmax_regression.json"),
    ("reference-r2", "optim/optax.contrib.sam.adam.rosenbrock.json"),
    ("reference-po", "optim/po.adamp.default.json"),
];

/// Steps kept of each optimizer case, so that a run stays cheap.
const STEPS: usize = 3;

struct Seed {
    name: String,
    text: String,
    value: Value,
}

fn seeds() -> &'static [Seed] {
    static SEEDS: std::sync::OnceLock<Vec<Seed>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        FILES
            .iter()
            .map(|(dir, file)| {
                let path = common::shared_dir(dir).join(file);
                // The reference files load as they are (those of the other sets may not replay:
                // they have optimizers and fields the core does not know).
                if *dir == "reference" {
                    load_case(&path).unwrap_or_else(|e| panic!("{e}"));
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let mut value: Value = serde_json::from_str(&text).unwrap();
                for key in ["grads", "expected", "expected_loss"] {
                    if let Some(a) = value.get_mut(key).and_then(Value::as_array_mut) {
                        a.truncate(STEPS);
                    }
                }
                if value.get("grads").is_some() || value.get("problem").is_some() {
                    value["steps"] = json!(STEPS);
                }
                Seed { name: file.to_string(), text, value }
            })
            .collect()
    })
}

fn config(cases: u32) -> Config {
    let base = Config::default();
    let rng_seed = match base.rng_seed {
        RngSeed::Random => RngSeed::Fixed(0x00de_5ce7),
        fixed => fixed,
    };
    Config { cases, failure_persistence: None, rng_seed, ..base }
}

/// The largest single allocation of this thread since [`largest_allocation`] last reset it.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
}

// SAFETY: forwards to the system allocator, only noting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns the largest single allocation it made on this thread.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|m| m.set(0));
    f();
    LARGEST.with(Cell::get)
}

/// What became of the replays of one property.
#[derive(Default, Debug)]
struct Outcomes {
    parse_errors: usize,
    run_errors: usize,
    ran: usize,
}

/// Parses and replays a case text: a parse error must name the file; a replay gives a result or
/// an error. A panic fails the property.
///
/// No allocation may be out of proportion to the text: a parsed value takes a few dozen bytes per
/// character at most, and the state of an optimizer a few buffers of its parameters' size.
fn replay(name: &str, text: &str, outcomes: &std::sync::Mutex<Outcomes>) {
    let mut outcome = 0;
    let largest = largest_allocation(|| {
        outcome = match parse_case(name, text) {
            Ok(case) => match run_and_check(&case) {
                Ok(_) => 2,
                Err(_) => 1,
            },
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with(name), "parse error without the file name: {msg}");
                assert!(!msg.contains('\n'), "error spans lines: {msg}");
                0
            }
        }
    });
    let bound = (1 << 20) + 64 * text.len();
    assert!(largest <= bound, "{name}: an allocation of {largest} bytes for {} bytes of text", text.len());
    let mut o = outcomes.lock().unwrap_or_else(|e| e.into_inner());
    match outcome {
        0 => o.parse_errors += 1,
        1 => o.run_errors += 1,
        _ => o.ran += 1,
    }
}

/// A value a hostile or careless writer might put anywhere.
#[derive(Debug, Clone)]
enum Hostile {
    U64(u64),
    I64(i64),
    F64(f64),
    Str(&'static str),
    Null,
    Bool(bool),
    EmptyList,
    EmptyObject,
    Nested,
}

impl Hostile {
    fn value(&self) -> Value {
        match self {
            Hostile::U64(x) => json!(x),
            Hostile::I64(x) => json!(x),
            Hostile::F64(x) => json!(x),
            Hostile::Str(s) => json!(s),
            Hostile::Null => Value::Null,
            Hostile::Bool(b) => json!(b),
            Hostile::EmptyList => json!([]),
            Hostile::EmptyObject => json!({}),
            Hostile::Nested => json!([[[]], {"a": [null]}]),
        }
    }
}

fn hostile() -> impl Strategy<Value = Hostile> {
    prop_oneof![
        prop::sample::select(vec![0u64, 1, 2, 3, 7, 100, 1 << 31, 1 << 32, 1 << 40, 1 << 62, u64::MAX - 1, u64::MAX])
            .prop_map(Hostile::U64),
        prop::sample::select(vec![-1i64, -2, -(1 << 40), i64::MIN]).prop_map(Hostile::I64),
        prop::sample::select(vec![0.5, -0.0, 1e-320, 1e308, -1e308, 2.5e9, f64::NAN, f64::INFINITY])
            .prop_map(Hostile::F64),
        prop::sample::select(vec!["NaN", "inf", "-Infinity", "1e999", "", "float16", "cos", "torch", "optax.adam"])
            .prop_map(Hostile::Str),
        Just(Hostile::Null),
        any::<bool>().prop_map(Hostile::Bool),
        Just(Hostile::EmptyList),
        Just(Hostile::EmptyObject),
        Just(Hostile::Nested),
    ]
}

/// A segment of a path into a JSON value.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

/// The paths of a value worth mutating: every object member, and the first two and the last
/// element of each list (the data lists are long and alike).
fn paths(v: &Value, here: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    out.push(here.clone());
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                here.push(Seg::Key(k.clone()));
                paths(x, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            let n = a.len();
            for i in (0..n).filter(|&i| i < 2 || i + 1 == n) {
                here.push(Seg::Index(i));
                paths(&a[i], here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

/// The path an index picks out of a list of paths.
fn pick<'a>(i: &prop::sample::Index, all: &'a [Vec<Seg>]) -> &'a [Seg] {
    i.get::<Vec<Seg>>(all)
}

fn at<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, s| match s {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::Index(i) => v.get_mut(*i),
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the value at a path.
    Replace(prop::sample::Index, Hostile),
    /// Delete an object member or a list element.
    Delete(prop::sample::Index),
    /// Cut a list (or a string) down to its first elements.
    Shorten(prop::sample::Index, usize),
    /// Repeat a list's first element.
    Grow(prop::sample::Index),
    /// Give a parameter a new shape; with `data`, the values of every step are resized to it when
    /// it has few elements (so the case reaches the optimizer).
    Shape(prop::sample::Index, Vec<u64>, bool),
    /// Replace a keyword argument (of `hparams`, `kwargs`, a chain link, a group).
    Kwarg(prop::sample::Index, Hostile),
}

/// A shape of rank 0 to 5 from short, long and overflowing dimensions, half the time an empty
/// one: a zero among the others.
fn shape() -> impl Strategy<Value = Vec<u64>> {
    let dim = prop::sample::select(vec![0u64, 1, 2, 3, 5, 1 << 20, 1 << 32, 1 << 40, 1 << 62, u64::MAX]);
    prop_oneof![
        prop::collection::vec(dim.clone(), 0..6),
        (prop::collection::vec(dim, 0..5), any::<prop::sample::Index>()).prop_map(|(mut d, i)| {
            d.insert(i.index(d.len() + 1), 0);
            d
        }),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<prop::sample::Index>(), hostile()).prop_map(|(i, h)| Mutation::Replace(i, h)),
        2 => any::<prop::sample::Index>().prop_map(Mutation::Delete),
        1 => (any::<prop::sample::Index>(), 0usize..3).prop_map(|(i, n)| Mutation::Shorten(i, n)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Grow),
        3 => (any::<prop::sample::Index>(), shape(), any::<bool>()).prop_map(|(i, d, data)| Mutation::Shape(i, d, data)),
        3 => (any::<prop::sample::Index>(), hostile()).prop_map(|(i, h)| Mutation::Kwarg(i, h)),
    ]
}

/// The paths of keyword arguments: members of objects under `hparams` or `kwargs`.
fn kwarg_paths(v: &Value) -> Vec<Vec<Seg>> {
    let mut all = vec![];
    paths(v, &mut vec![], &mut all);
    all.into_iter()
        .filter(|p| {
            matches!(p.last(), Some(Seg::Key(_)))
                && matches!(p.first(), Some(Seg::Key(k)) if k == "hparams" || k == "kwargs" || k == "param_groups")
        })
        .collect()
}

fn apply(v: &mut Value, m: &Mutation) {
    let mut all = vec![];
    paths(v, &mut vec![], &mut all);
    match m {
        Mutation::Replace(i, h) => {
            if let Some(x) = at(v, pick(i, &all)) {
                *x = h.value();
            }
        }
        Mutation::Delete(i) => {
            let path = pick(i, &all);
            let Some((last, parent)) = path.split_last() else { return };
            match (at(v, parent), last) {
                (Some(Value::Object(o)), Seg::Key(k)) => {
                    o.remove(k);
                }
                (Some(Value::Array(a)), Seg::Index(j)) if *j < a.len() => {
                    a.remove(*j);
                }
                _ => {}
            }
        }
        Mutation::Shorten(i, n) => match at(v, pick(i, &all)) {
            Some(Value::Array(a)) => a.truncate(*n),
            Some(Value::String(s)) => *s = s.chars().take(*n).collect(),
            _ => {}
        },
        Mutation::Grow(i) => {
            if let Some(Value::Array(a)) = at(v, pick(i, &all)) {
                if let Some(first) = a.first().cloned() {
                    a.push(first);
                }
            }
        }
        Mutation::Shape(i, dims, data) => {
            let n_params = v.get("params").and_then(Value::as_array).map_or(0, Vec::len);
            if n_params == 0 {
                return;
            }
            let k = i.index(n_params);
            v["params"][k]["shape"] = json!(dims);
            let numel = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
            if let Some(n) = numel.filter(|&n| *data && n <= 64) {
                let vals = json!(vec![0.25f32; n as usize]);
                v["params"][k]["init"] = vals.clone();
                for key in ["grads", "expected"] {
                    if let Some(steps) = v.get_mut(key).and_then(Value::as_array_mut) {
                        for step in steps {
                            if let Some(t) = step.get_mut(k) {
                                *t = vals.clone();
                            }
                        }
                    }
                }
            }
        }
        Mutation::Kwarg(i, h) => {
            let ks = kwarg_paths(v);
            if !ks.is_empty() {
                if let Some(x) = at(v, pick(i, &ks)) {
                    *x = h.value();
                }
            }
        }
    }
}

/// Structured mutations: values replaced by hostile ones, members deleted, lists cut or grown,
/// shapes that overflow or name long axes beside a zero, keyword arguments made null, negative,
/// huge or ill-typed.
#[test]
fn mutated_cases_give_an_error_or_a_result() {
    let outcomes = std::sync::Mutex::new(Outcomes::default());
    let strategy = (any::<prop::sample::Index>(), prop::collection::vec(mutation(), 1..4));
    TestRunner::new(config(384))
        .run(&strategy, |(seed, mutations)| {
            let seed = seed.get(seeds());
            let mut v = seed.value.clone();
            for m in &mutations {
                apply(&mut v, m);
            }
            replay(&seed.name, &v.to_string(), &outcomes);
            Ok(())
        })
        .unwrap();
    // The mutations must reach the optimizers and schedules, not stop at the parser.
    let o = outcomes.into_inner().unwrap();
    eprintln!("{o:?}");
    assert!(o.ran >= 32 && o.run_errors >= 16 && o.parse_errors >= 32, "{o:?}");
}

/// Text mutations of the files as they are: cut short anywhere, or with a span replaced by a
/// token (numbers JSON cannot hold, NaN-like words, stray brackets).
#[test]
fn truncated_or_spliced_texts_give_an_error_or_a_result() {
    let outcomes = std::sync::Mutex::new(Outcomes::default());
    let token = prop::sample::select(vec![
        "",
        "NaN",
        "-Infinity",
        "1e999",
        "-1",
        "18446744073709551616",
        "-9223372036854775809",
        "4294967296",
        "0",
        "null",
        "[",
        "]}",
        "\"",
        "{\"a\":",
        ",,",
        "1e-999",
        "0.000",
    ]);
    let strategy = (any::<prop::sample::Index>(), any::<prop::sample::Index>(), 0usize..12, token, any::<bool>());
    TestRunner::new(config(192))
        .run(&strategy, |(seed, cut, len, token, splice)| {
            let seed = seed.get(seeds());
            let text = &seed.text;
            let mut at = cut.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let mutated = if splice {
                let mut end = (at + len).min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}{}{}", &text[..at], token, &text[end..])
            } else {
                text[..at].to_string()
            };
            replay(&seed.name, &mutated, &outcomes);
            Ok(())
        })
        .unwrap();
    let o = outcomes.into_inner().unwrap();
    eprintln!("{o:?}");
    assert!(o.ran + o.run_errors >= 8 && o.parse_errors >= 32, "{o:?}");
}

/// Shapes alone, in the optimizer cases, with values to match: empty tensors whose other axes are
/// long, shapes that overflow, reshaped parameters. Each reaches the optimizer when its element
/// count is small, and must step or be refused without allocating for its axes.
#[test]
fn reshaped_parameters_give_an_error_or_a_result() {
    let outcomes = std::sync::Mutex::new(Outcomes::default());
    let optim: Vec<&Seed> = seeds().iter().filter(|s| s.value.get("grads").is_some()).collect();
    let strategy = (any::<prop::sample::Index>(), prop::collection::vec((any::<prop::sample::Index>(), shape()), 1..3));
    TestRunner::new(config(256))
        .run(&strategy, |(seed, shapes)| {
            let seed = seed.get(&optim);
            let mut v = seed.value.clone();
            for (i, dims) in shapes {
                apply(&mut v, &Mutation::Shape(i, dims, true));
            }
            replay(&seed.name, &v.to_string(), &outcomes);
            Ok(())
        })
        .unwrap();
    let o = outcomes.into_inner().unwrap();
    eprintln!("{o:?}");
    assert!(o.ran >= 32 && o.parse_errors >= 32, "{o:?}");
}
