//! The optimizers that evaluate the objective themselves (L-BFGS, SAM, Polyak SGD, MoMo): each
//! one in the registry is refused by the gradient-only builder with a clear message, builds
//! through `build_closure_optimizer`, checks the shapes of what it steps, refuses bad keyword
//! arguments naming them, exposes a learning rate that a step follows when it is set, and resumes
//! from a saved state bit for bit. (The registry-wide tests of the gradient-only optimizers,
//! tests/shapes.rs and tests/learning_rate.rs, skip these.)

mod common;

use descent_core::closure::{
    build_closure_optimizer, closure_optimizers, is_closure_optimizer, ClosureOptimizer, Objective,
};
use descent_core::replay::{collect_case_files, load_case, Case, ProblemCase};
use descent_core::spec::{build_optimizer, registry_names, resolve_optimizer};
use descent_core::state::StateDict;
use descent_core::Result;
use serde_json::{json, Value};

fn shapes() -> Vec<Vec<usize>> {
    vec![vec![4, 3], vec![3]]
}

fn init() -> Vec<Vec<f32>> {
    vec![(0..12).map(|j| 0.3 - 0.05 * j as f32).collect(), vec![0.5, -0.25, 1.0]]
}

/// A bowl `½ Σ s_j (x_j − c_j)²` with its minimum away from the start (loss ≥ 0).
fn bowl(params: &[Vec<f32>], grads: &mut [Vec<f32>]) -> Result<f32> {
    let mut loss = 0.0f32;
    for (i, (p, g)) in params.iter().zip(grads.iter_mut()).enumerate() {
        for (j, (&x, gv)) in p.iter().zip(g.iter_mut()).enumerate() {
            let c = 0.1 * ((i + j) % 5) as f32 - 0.2;
            let s = 1.0 + ((i + 2 * j) % 3) as f32;
            loss += 0.5 * s * (x - c) * (x - c);
            *gv = s * (x - c);
        }
    }
    Ok(loss)
}

/// The keyword arguments a closure optimizer needs beyond its defaults.
fn hparams(reg: &str) -> Value {
    match reg {
        "optax.contrib.sam" => json!({
            "optimizer": ["sgd", {"learning_rate": 0.05}],
            "adv_optimizer": ["chain", {"links": [["contrib.normalize", {}], ["sgd", {"learning_rate": 0.05}]]}]
        }),
        "po.sam" => json!({"base_optimizer": ["torch.optim.SGD", {"lr": 0.05, "momentum": 0.9}]}),
        "descent.sam" => json!({"base": ["adamw", {"weight_decay": 0.1}], "lr": 0.05, "rho": 0.05}),
        "optax.polyak_sgd" => json!({"max_learning_rate": 0.1}),
        "optax.contrib.sophia" => json!({"learning_rate": 0.05}),
        _ => json!({}),
    }
}

fn build(reg: &str, h: &Value, shapes: &[Vec<usize>]) -> Result<Box<dyn ClosureOptimizer>> {
    let (lib, name) = resolve_optimizer(reg)?;
    build_closure_optimizer(lib, &name, h, shapes)
}

fn run(opt: &mut dyn ClosureOptimizer, params: &mut [Vec<f32>], steps: usize) {
    for _ in 0..steps {
        opt.step(params, &mut bowl).unwrap();
    }
}

/// The names this family adds (the L-BFGS family adds its own beside them).
const FIRST_ORDER: &[&str] = &[
    "descent.sam",
    "optax.contrib.momo",
    "optax.contrib.momo_adam",
    "optax.contrib.sam",
    "optax.polyak_sgd",
    "po.sam",
];

#[test]
fn closure_optimizers_are_in_the_registry_and_refused_by_the_gradient_builder() {
    let names = closure_optimizers();
    let registry = registry_names();
    for n in FIRST_ORDER {
        assert!(names.iter().any(|x| x == n), "{n} is not a closure optimizer");
    }
    for reg in &names {
        assert!(registry.contains(reg), "{reg} is not listed in the registry");
        let (lib, name) = resolve_optimizer(reg).unwrap();
        assert!(is_closure_optimizer(lib, &name));
        let e = build_optimizer(lib, &name, &hparams(reg), None, &shapes()).err().unwrap().to_string();
        assert!(
            e.contains(reg.as_str()) && e.contains("evaluates the objective itself") && e.contains("closure"),
            "{e}"
        );
        build(reg, &hparams(reg), &shapes()).unwrap_or_else(|e| panic!("{reg}: {e}"));
    }
    // Bare names resolve as the gradient-only ones do: torch first, then optax, then descent's
    // own closure optimizers, then optax contrib; so bare `sam` is descent's two-pass SAM, and
    // optax's is reached by its full name.
    assert_eq!(resolve_optimizer("sam").unwrap(), ("descent", "sam".to_string()));
    assert_eq!(resolve_optimizer("descent.sam").unwrap(), ("descent", "sam".to_string()));
    assert_eq!(resolve_optimizer("optax.contrib.sam").unwrap(), ("optax", "contrib.sam".to_string()));
    assert_eq!(resolve_optimizer("momo_adam").unwrap(), ("optax", "contrib.momo_adam".to_string()));
    assert_eq!(resolve_optimizer("polyak_sgd").unwrap(), ("optax", "polyak_sgd".to_string()));
    assert_eq!(resolve_optimizer("po.sam").unwrap(), ("po", "sam".to_string()));
    // Nor can a chain or wrapper step one on gradients.
    let chain = json!({"links": [["clip", {"max_delta": 1.0}], ["polyak_sgd", {}]]});
    let e = build_optimizer("optax", "chain", &chain, None, &shapes()).err().unwrap().to_string();
    assert!(e.contains("optax.polyak_sgd") && e.contains("closure"), "{e}");
    // The other way round: a gradient-only name is not a closure optimizer.
    let e = build_closure_optimizer("optax", "adam", &json!({}), &shapes()).err().unwrap().to_string();
    assert!(e.contains("optax.adam") && e.contains("optax.contrib.sam"), "{e}");
}

#[test]
fn shapes_are_checked_at_build_and_at_each_step() {
    for reg in closure_optimizers() {
        let h = hparams(&reg);
        let huge = vec![vec![2], vec![1 << 32, 1 << 32]];
        let e = build(&reg, &h, &huge).err().unwrap_or_else(|| panic!("{reg}")).to_string();
        assert!(e.contains("too large"), "{reg}: {e}");
        let mut opt = build(&reg, &h, &shapes()).unwrap();
        let mut bad = vec![init()[0].clone()];
        let e = opt.step(&mut bad, &mut bowl).unwrap_err().to_string();
        assert!(e.contains("expected 2 parameter tensors, got 1"), "{reg}: {e}");
        let mut bad = vec![init()[0].clone(), vec![0.0; 4]];
        let e = opt.step(&mut bad, &mut bowl).unwrap_err().to_string();
        assert!(e.contains("parameter 1 has 4 elements, expected 3"), "{reg}: {e}");
        assert_eq!(bad, vec![init()[0].clone(), vec![0.0; 4]], "{reg}: a refused step moved the parameters");
        // Empty tensors whose other axis is long: stepped, with no state for the long axis.
        let shapes = vec![vec![0, 1 << 40], vec![2, 2]];
        let mut opt = build(&reg, &h, &shapes).unwrap_or_else(|e| panic!("{reg}: {e}"));
        let mut params = vec![vec![], vec![0.5f32, -0.5, 0.25, 1.0]];
        run(opt.as_mut(), &mut params, 3);
        let dict = opt.state_dict().unwrap();
        let floats: usize = dict.buffers.values().map(Vec::len).sum();
        // (A history of a few vectors of the 4 elements is fine; one float per long-axis entry
        // would be 2⁴⁰.)
        assert!(floats < 1 << 16, "{reg}: {floats} floats of state");
    }
}

#[test]
fn bad_keyword_arguments_are_refused_naming_them() {
    for reg in closure_optimizers() {
        let mut h = hparams(&reg);
        h["bogus_argument"] = json!(1);
        let e = build(&reg, &h, &shapes()).err().unwrap_or_else(|| panic!("{reg}")).to_string();
        assert!(e.contains("bogus_argument"), "{reg}: {e}");
    }
    let sam = hparams("optax.contrib.sam");
    let po_sam = hparams("po.sam");
    let dsam = hparams("descent.sam");
    let with = |base: &Value, key: &str, v: Value| {
        let mut h = base.clone();
        h[key] = v;
        h
    };
    for (reg, h, needle) in [
        ("optax.polyak_sgd", json!({"variant": "sps++"}), "variant"),
        ("optax.polyak_sgd", json!({"max_learning_rate": -1.0}), "max_learning_rate"),
        ("optax.polyak_sgd", json!({"scaling": "big"}), "scaling"),
        ("optax.contrib.momo", json!({"beta": 1.5}), "beta"),
        ("optax.contrib.momo", json!({"learning_rate": -0.1}), "learning_rate"),
        ("optax.contrib.momo", json!({"adapt_lower_bound": 1}), "adapt_lower_bound"),
        ("optax.contrib.momo_adam", json!({"b2": -0.5}), "b2"),
        ("optax.contrib.momo_adam", json!({"eps": null}), "eps"),
        ("optax.contrib.sam", json!({"adv_optimizer": ["sgd", {"learning_rate": 0.1}]}), "optimizer"),
        ("optax.contrib.sam", with(&sam, "sync_period", json!(0)), "sync_period"),
        ("optax.contrib.sam", with(&sam, "sync_period", json!(1u64 << 32)), "sync_period"),
        ("optax.contrib.sam", with(&sam, "optimizer", json!(["adamz", {}])), "adamz"),
        ("optax.contrib.sam", with(&sam, "optimizer", json!(["adam", {"learning_rate": 0.1, "b3": 1}])), "b3"),
        ("optax.contrib.sam", with(&sam, "adv_optimizer", json!(["contrib.momo", {}])), "closure"),
        ("optax.contrib.sam", with(&sam, "batch_axis_name", json!("batch")), "batch_axis_name"),
        ("po.sam", json!({"rho": 0.1}), "base_optimizer"),
        ("po.sam", with(&po_sam, "rho", json!(-0.1)), "rho"),
        ("po.sam", with(&po_sam, "perturb_eps", json!(-1e-12)), "perturb_eps"),
        ("po.sam", with(&po_sam, "base_optimizer", json!(["keras.SGD", {}])), "base_optimizer"),
        ("po.sam", with(&po_sam, "base_optimizer", json!(["torch.optim.SGD", {"lr": -1.0}])), "learning rate"),
        ("po.sam", with(&po_sam, "base_optimizer", json!(["torch.optim.LBFGS", {}])), "lbfgs"),
        ("descent.sam", json!({"rho": 0.1}), "base"),
        ("descent.sam", with(&dsam, "rho", json!(-0.1)), "rho"),
        ("descent.sam", with(&dsam, "adaptive", json!("yes")), "adaptive"),
        ("descent.sam", with(&dsam, "perturb_eps", json!(-1.0)), "perturb_eps"),
        ("descent.sam", with(&dsam, "base", json!("adamz")), "adamz"),
        ("descent.sam", with(&dsam, "base", json!(7)), "base"),
        ("descent.sam", with(&dsam, "base", json!("lbfgs")), "torch.lbfgs` evaluates the objective itself"),
        ("descent.sam", with(&dsam, "base", json!("sam")), "descent.sam` evaluates the objective itself"),
        ("descent.sam", with(&dsam, "base", json!(["adamw", {"betas": [0.9]}])), "betas"),
        ("descent.sam", with(&dsam, "base", json!(["adamw", {"lr": 0.1}])), "give it once"),
        ("descent.sam", with(&dsam, "base_hparams", json!({"eps": 1e-8})), "give them once"),
        ("descent.sam", json!({"base": "sgd", "base_hparams": [0.9]}), "base_hparams"),
        ("descent.sam", json!({"base": "sgd", "lr": -0.1}), "learning rate"),
    ] {
        let e = build(reg, &h, &shapes()).err().unwrap_or_else(|| panic!("{reg} {h} was accepted")).to_string();
        assert!(e.contains(needle), "{reg} {h}: {e}");
    }
}

/// Every closure optimizer with a learning rate lets it be set.
#[test]
fn learning_rates_can_be_read_and_set() {
    for reg in closure_optimizers() {
        let mut opt = build(&reg, &hparams(&reg), &shapes()).unwrap();
        let rates = opt.learning_rates();
        if FIRST_ORDER.contains(&reg.as_str()) {
            assert_eq!(rates.len(), 1, "{reg}: {rates:?}");
        }
        if rates.is_empty() {
            assert!(opt.set_learning_rate(0.1).is_err(), "{reg}");
            continue;
        }
        opt.set_learning_rate(0.02).unwrap();
        assert!(opt.learning_rates().iter().all(|r| *r == Some(0.02)), "{reg}");
        assert!(opt.set_learning_rate(f64::NAN).is_err() && opt.set_learning_rate(-1.0).is_err(), "{reg}");
    }
}

fn displacement(a: &[Vec<f32>], b: &[Vec<f32>]) -> Vec<f64> {
    a.iter().flatten().zip(b.iter().flatten()).map(|(&x, &y)| y as f64 - x as f64).collect()
}

fn assert_scaled(got: &[f64], want: &[f64], factor: f64, what: &str) {
    for (g, w) in got.iter().zip(want) {
        // Each displacement is a difference of f32 parameters of magnitude ≤ 1.5.
        assert!((g - factor * w).abs() <= 1e-5 * w.abs() + 4e-7, "{what}: {g} vs {factor}·{w}");
    }
}

/// A rate set between steps is the one the next step uses, with the library's meaning.
#[test]
fn a_rate_set_between_steps_drives_the_next_step() {
    // SAM around plain SGD: the perturbation does not depend on the rate, so half the rate halves
    // the step from w (pytorch_optimizer: the base optimizer's `lr`).
    let h = json!({"base_optimizer": ["torch.optim.SGD", {"lr": 0.05}], "rho": 0.1});
    let (mut a, mut b) = (build("po.sam", &h, &shapes()).unwrap(), build("po.sam", &h, &shapes()).unwrap());
    let (mut pa, mut pb) = (init(), init());
    run(a.as_mut(), &mut pa, 2);
    run(b.as_mut(), &mut pb, 2);
    let w = pa.clone();
    a.set_learning_rate(0.025).unwrap();
    run(a.as_mut(), &mut pa, 1);
    run(b.as_mut(), &mut pb, 1);
    assert_scaled(&displacement(&w, &pa), &displacement(&w, &pb), 0.5, "po.sam");

    // optax SAM: the outer optimizer's rate; adversarial steps do not use it.
    let h = hparams("optax.contrib.sam");
    let sam = |h: &Value| build("optax.contrib.sam", h, &shapes()).unwrap();
    let (mut a, mut b) = (sam(&h), sam(&h));
    let (mut pa, mut pb) = (init(), init());
    run(a.as_mut(), &mut pa, 2);
    run(b.as_mut(), &mut pb, 2);
    let w = pa.clone();
    a.set_learning_rate(0.025).unwrap();
    run(a.as_mut(), &mut pa, 1);
    run(b.as_mut(), &mut pb, 1);
    assert_eq!(pa, pb, "an adversarial step used the outer rate");
    run(a.as_mut(), &mut pa, 1);
    run(b.as_mut(), &mut pb, 1);
    assert_scaled(&displacement(&w, &pa), &displacement(&w, &pb), 0.5, "optax.contrib.sam");

    // MoMo's rate caps its step: far from the minimum, a small rate is the step size. The first
    // step's average is the gradient itself.
    let mut g0 = init();
    bowl(&init(), &mut g0).unwrap();
    let mut momo = build("momo", &json!({}), &shapes()).unwrap();
    momo.set_learning_rate(1e-3).unwrap();
    let mut p = init();
    run(momo.as_mut(), &mut p, 1);
    let want: Vec<f64> = g0.iter().flatten().map(|&g| -1e-3 * g as f64).collect();
    assert_scaled(&displacement(&init(), &p), &want, 1.0, "optax.contrib.momo");
    // MoMo-Adam: α/bc1 caps it, and its first direction is m/D = (1−b1)·g/(|g| + ε).
    let mut momo = build("momo_adam", &json!({}), &shapes()).unwrap();
    momo.set_learning_rate(1e-4).unwrap();
    let mut p = init();
    run(momo.as_mut(), &mut p, 1);
    let want: Vec<f64> = g0.iter().flatten().map(|&g| -1e-4 * g as f64 / (g.abs() as f64 + 1e-8)).collect();
    assert_scaled(&displacement(&init(), &p), &want, 1.0, "optax.contrib.momo_adam");
    // Polyak SGD: the rate is `scaling`, the factor of sgd's update; capped steps scale with it.
    let mut polyak = build("polyak_sgd", &json!({"max_learning_rate": 1e-3}), &shapes()).unwrap();
    polyak.set_learning_rate(0.5).unwrap();
    let mut p = init();
    run(polyak.as_mut(), &mut p, 1);
    let want: Vec<f64> = g0.iter().flatten().map(|&g| -1e-3 * 0.5 * g as f64).collect();
    assert_scaled(&displacement(&init(), &p), &want, 1.0, "optax.polyak_sgd");
}

/// descent's `sam` is pytorch_optimizer's SAM (ASAM with `adaptive`) around the base it names:
/// the same numbers, bit for bit, whichever way the base and its rate are given.
#[test]
fn descent_sam_is_po_sam_around_its_base() {
    for adaptive in [false, true] {
        let po = json!({
            "base_optimizer": ["torch.optim.SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": true}],
            "rho": 0.1,
            "adaptive": adaptive,
        });
        let want = {
            let mut opt = build("po.sam", &po, &shapes()).unwrap();
            let mut p = init();
            run(opt.as_mut(), &mut p, 6);
            p
        };
        for h in [
            json!({"base": ["sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": true}], "rho": 0.1, "adaptive": adaptive}),
            json!({"base": "torch.sgd", "base_hparams": {"momentum": 0.9, "nesterov": true}, "lr": 0.05, "rho": 0.1,
                   "adaptive": adaptive}),
            json!({"base": ["sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": true}], "lr": 0.05, "rho": 0.1,
                   "adaptive": adaptive}),
        ] {
            let mut opt = build("sam", &h, &shapes()).unwrap();
            assert_eq!(opt.learning_rates(), vec![Some(0.05)], "{h}");
            let mut p = init();
            run(opt.as_mut(), &mut p, 6);
            assert_eq!(p, want, "{h}");
        }
    }
    // An optax base takes `learning_rate`; `lr` sets it.
    let mut a = build("sam", &json!({"base": "optax.adam", "lr": 0.01}), &shapes()).unwrap();
    let mut b = build("sam", &json!({"base": ["optax.adam", {"learning_rate": 0.01}]}), &shapes()).unwrap();
    let (mut pa, mut pb) = (init(), init());
    run(a.as_mut(), &mut pa, 3);
    run(b.as_mut(), &mut pb, 3);
    assert_eq!(pa, pb);
    assert_ne!(pa, init());
}

/// optax SAM's opaque mode runs the adversarial steps inside one step: with `sync_period` 2, n
/// opaque steps land where 2n transparent ones do.
#[test]
fn optax_sam_opaque_mode_lands_where_transparent_mode_does() {
    let base = json!({
        "optimizer": ["adam", {"learning_rate": 0.05}],
        "adv_optimizer": ["chain", {"links": [["contrib.normalize", {}], ["sgd", {"learning_rate": 0.1}]]}],
    });
    let mut opaque = base.clone();
    opaque["opaque_mode"] = json!(true);
    let mut t = build("optax.contrib.sam", &base, &shapes()).unwrap();
    let mut o = build("optax.contrib.sam", &opaque, &shapes()).unwrap();
    let (mut pt, mut po) = (init(), init());
    for _ in 0..5 {
        run(t.as_mut(), &mut pt, 2);
        run(o.as_mut(), &mut po, 1);
        for (a, b) in pt.iter().flatten().zip(po.iter().flatten()) {
            assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        }
    }
}

/// A run stopped after step k, saved through JSON, loaded into a fresh optimizer and continued
/// equals an uninterrupted run bit for bit.
fn run_resumed(
    build: &dyn Fn() -> Box<dyn ClosureOptimizer>,
    p0: &[Vec<f32>],
    objective: &mut dyn Objective,
    steps: usize,
    stop_at: Option<usize>,
) -> Vec<Vec<f32>> {
    let mut opt = build();
    let mut params = p0.to_vec();
    for t in 0..steps {
        if Some(t) == stop_at {
            let text = opt.state_dict().unwrap().to_json().unwrap();
            opt = build();
            opt.load_state_dict(&StateDict::from_json(&text).unwrap()).unwrap();
        }
        opt.step(&mut params, objective).unwrap();
    }
    params
}

fn assert_resumes(
    id: &str,
    build: &dyn Fn() -> Box<dyn ClosureOptimizer>,
    p0: &[Vec<f32>],
    objective: &mut dyn Objective,
    steps: usize,
) {
    let full = run_resumed(build, p0, objective, steps, None);
    for k in [1, steps / 2, steps - 1] {
        let resumed = run_resumed(build, p0, objective, steps, Some(k));
        for (a, b) in full.iter().flatten().zip(resumed.iter().flatten()) {
            assert_eq!(a.to_bits(), b.to_bits(), "{id}: resumed after step {k} differs ({a} vs {b})");
        }
    }
}

fn problem_cases() -> Vec<ProblemCase> {
    collect_case_files(&[common::shared_dir("reference-r2")])
        .unwrap()
        .iter()
        .filter_map(|f| match load_case(f).unwrap_or_else(|e| panic!("{e}")) {
            Case::Problem(c) => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn resume_is_bit_exact() {
    for reg in closure_optimizers() {
        let h = hparams(&reg);
        let make = || build(&reg, &h, &shapes()).unwrap();
        assert_resumes(&reg, &make, &init(), &mut bowl, 7);
    }
    // The reference problems, with each case's optimizer.
    let mut checked = 0;
    for c in problem_cases() {
        if c.optimizer().is_err() {
            continue;
        }
        let make = || c.optimizer().unwrap();
        let mut problem = c.problem.clone();
        assert_resumes(&c.id, &make, &c.init, &mut problem, c.expected.len());
        checked += 1;
    }
    assert!(checked >= 14, "only {checked} problem cases resumed");
}

#[test]
fn a_saved_state_of_another_optimizer_is_refused_whole() {
    let mut momo = build("momo", &json!({}), &shapes()).unwrap();
    let mut p = init();
    run(momo.as_mut(), &mut p, 2);
    let before = momo.state_dict().unwrap();
    let mut adam = build("momo_adam", &json!({}), &shapes()).unwrap();
    let e = momo.load_state_dict(&adam.state_dict().unwrap()).unwrap_err().to_string();
    assert!(e.starts_with("state:"), "{e}");
    assert_eq!(momo.state_dict().unwrap(), before);
}
