//! L-BFGS (torch `LBFGS`, optax `lbfgs`) on the `problem` cases of the second reference set and
//! the project's own, with the library's objectives (`reference-r2/README.md`'s definitions),
//! plus resume, the live learning rate and refused arguments.

mod common;

use descent_core::closure::problems::{Problem, Rosenbrock, SoftmaxRegression};
use descent_core::closure::{build_closure_optimizer, ClosureOptimizer, Objective};
use descent_core::state::{Checker, Loader, Saver, StateDict};
use descent_core::Result;
use serde_json::{json, Value};

/// The objective of a problem case: the library's own (`descent_core::closure::problems`, the
/// one `descent replay` evaluates).
fn problem_from_json(p: &Value) -> Problem {
    match p["kind"].as_str().unwrap() {
        "softmax_regression" => {
            let u = |k: &str| p[k].as_u64().unwrap() as usize;
            let x = p["x"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let y = p["y"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            let s = SoftmaxRegression::new(u("n"), u("d"), u("k"), x, y, p["l2"].as_f64().unwrap()).unwrap();
            Problem::SoftmaxRegression(s)
        }
        "rosenbrock" => Problem::Rosenbrock(Rosenbrock::new(p["m"].as_u64().unwrap() as usize).unwrap()),
        other => panic!("unknown problem {other}"),
    }
}

/// A problem case file, parsed.
struct Case {
    id: String,
    library: String,
    hparams: Value,
    problem: Problem,
    shapes: Vec<Vec<usize>>,
    init: Vec<Vec<f32>>,
    expected: Vec<Vec<Vec<f32>>>,
    rel: f64,
    abs: f64,
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn load(path: &std::path::Path) -> Case {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    let params = v["params"].as_array().unwrap();
    Case {
        library: id.split('.').next().unwrap().to_string(),
        id,
        hparams: v["hparams"].clone(),
        problem: problem_from_json(&v["problem"]),
        shapes: params
            .iter()
            .map(|p| p["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect())
            .collect(),
        init: params.iter().map(|p| floats(&p["init"])).collect(),
        expected: v["expected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_array().unwrap().iter().map(floats).collect())
            .collect(),
        rel: v["tolerance"]["rel"].as_f64().unwrap(),
        abs: v["tolerance"]["abs"].as_f64().unwrap(),
    }
}

/// The L-BFGS cases of the shared set and of the project's own (`tests/cases/problems`: line
/// searches, budgets and histories the shared set does not exercise).
fn lbfgs_cases() -> Vec<Case> {
    let own = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/problems");
    let mut files: Vec<_> = [common::shared_dir("reference-r2").join("optim"), own]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            (name.starts_with("torch.lbfgs.") || name.starts_with("optax.lbfgs.")) && name.ends_with(".json")
        })
        .collect();
    files.sort();
    files.iter().map(|f| load(f)).collect()
}

fn build(case: &Case) -> Box<dyn ClosureOptimizer> {
    build_closure_optimizer(&case.library, "lbfgs", &case.hparams, &case.shapes).unwrap()
}

fn step(opt: &mut dyn ClosureOptimizer, problem: &Problem, params: &mut [Vec<f32>]) -> Result<f32> {
    let mut problem = problem.clone();
    let mut f = |p: &[Vec<f32>], g: &mut [Vec<f32>]| -> Result<f32> { problem.value_and_grad(p, g) };
    opt.step(params, &mut f)
}

/// The pass rule of `reference/README.md`: the worst ratio of error to allowance over the steps,
/// and the step where it occurs.
fn check(case: &Case, trajectory: &[Vec<Vec<f32>>]) -> (f64, usize) {
    let mut worst = (0.0f64, 0);
    for (t, (ours, want)) in trajectory.iter().zip(&case.expected).enumerate() {
        let (mut err, mut scale) = (0.0f64, 0.0f64);
        for ((o, w), p0) in ours.iter().zip(want).zip(&case.init) {
            for ((&o, &w), &p0) in o.iter().zip(w).zip(p0) {
                let (d_ours, d_ref) = (o as f64 - p0 as f64, w as f64 - p0 as f64);
                let e = (d_ours - d_ref).abs();
                err = if e.is_nan() { f64::INFINITY } else { err.max(e) };
                scale = scale.max(d_ref.abs());
            }
        }
        let ratio = err / (case.rel * scale + case.abs);
        if ratio > worst.0 || ratio.is_nan() {
            worst = (ratio, t);
        }
    }
    worst
}

fn run(case: &Case, steps: usize) -> Vec<Vec<Vec<f32>>> {
    let mut opt = build(case);
    let mut params = case.init.clone();
    (0..steps)
        .map(|_| {
            step(opt.as_mut(), &case.problem, &mut params).unwrap();
            params.clone()
        })
        .collect()
}

#[test]
fn lbfgs_reference_cases_pass() {
    let cases = lbfgs_cases();
    assert!(cases.len() >= 8, "expected the L-BFGS cases of reference-r2, found {}", cases.len());
    let mut failures = vec![];
    for case in &cases {
        let trajectory = run(case, case.expected.len());
        let (ratio, t) = check(case, &trajectory);
        eprintln!("{}: {ratio:.3}x tolerance at worst (step {t})", case.id);
        if ratio.is_nan() || ratio > 1.0 {
            failures.push(format!("{}: {ratio:.3}x tolerance at step {t}", case.id));
        }
    }
    assert!(failures.is_empty(), "failing cases:\n{}", failures.join("\n"));
}

#[test]
fn the_step_returns_the_loss_where_it_started() {
    for case in lbfgs_cases() {
        let mut opt = build(&case);
        let mut params = case.init.clone();
        let mut grads: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        for t in 0..3 {
            let before = case.problem.clone().value_and_grad(&params, &mut grads).unwrap();
            let loss = step(opt.as_mut(), &case.problem, &mut params).unwrap();
            assert_eq!(loss.to_bits(), before.to_bits(), "{} step {t}", case.id);
        }
    }
}

/// Saves the state (through JSON text) and loads it into a freshly built optimizer, checked first.
fn reload(case: &Case, opt: &mut Box<dyn ClosureOptimizer>) {
    let mut saver = Saver::default();
    opt.visit_state(&mut saver).unwrap();
    let text = saver.dict.to_json().unwrap();
    let dict = StateDict::from_json(&text).unwrap();
    let mut fresh = build(case);
    let mut checker = Checker::new(&dict);
    fresh.visit_state(&mut checker).unwrap();
    checker.finish().unwrap();
    fresh.visit_state(&mut Loader::new(&dict)).unwrap();
    *opt = fresh;
}

#[test]
fn resume_is_bit_exact() {
    for case in lbfgs_cases() {
        let steps = case.expected.len();
        let full = run(&case, steps);
        for k in [0, 1, steps / 2, steps - 1] {
            let mut opt = build(&case);
            let mut params = case.init.clone();
            for (t, want) in full.iter().enumerate() {
                if t == k {
                    reload(&case, &mut opt);
                }
                step(opt.as_mut(), &case.problem, &mut params).unwrap();
                for (a, b) in params.iter().flatten().zip(want.iter().flatten()) {
                    assert_eq!(a.to_bits(), b.to_bits(), "{}: resumed before step {k}, step {t}: {a} vs {b}", case.id);
                }
            }
        }
    }
}

#[test]
fn a_state_of_another_size_is_refused() {
    let case = lbfgs_cases().into_iter().find(|c| c.library == "torch").unwrap();
    let mut opt = build(&case);
    let mut saver = Saver::default();
    opt.visit_state(&mut saver).unwrap();
    let mut other = build_closure_optimizer("torch", "lbfgs", &json!({"history_size": 3}), &case.shapes).unwrap();
    let mut checker = Checker::new(&saver.dict);
    assert!(other.visit_state(&mut checker).is_err());
}

/// Two optimizers: one built with `lr`, one built with another rate and set to `lr` through
/// `visit_learning_rates` before each step. Their trajectories must be the same.
fn rate_is_live(library: &str, key: &str, extra: Value) {
    let case = lbfgs_cases().into_iter().find(|c| c.library == library && c.id.ends_with("rosenbrock")).unwrap();
    let with = |lr: f64| {
        let mut h = extra.clone();
        h[key] = json!(lr);
        build_closure_optimizer(library, "lbfgs", &h, &case.shapes).unwrap()
    };
    let (mut a, mut b, mut c) = (with(0.25), with(1.0), with(1.0));
    let (mut pa, mut pb, mut pc) = (case.init.clone(), case.init.clone(), case.init.clone());
    for t in 0..4 {
        let mut seen = 0;
        b.visit_learning_rates(&mut |lr| {
            assert_eq!(lr.constant(), Some(if t == 0 { 1.0 } else { 0.25 }));
            *lr = 0.25.into();
            seen += 1;
        });
        assert_eq!(seen, 1, "{library}: one learning rate");
        step(a.as_mut(), &case.problem, &mut pa).unwrap();
        step(b.as_mut(), &case.problem, &mut pb).unwrap();
        step(c.as_mut(), &case.problem, &mut pc).unwrap();
        assert_eq!(pa, pb, "{library} step {t}");
    }
    assert_ne!(pa, pc, "{library}: the rate changes the trajectory");
}

#[test]
fn the_learning_rate_is_live() {
    rate_is_live("torch", "lr", json!({"max_iter": 3}));
    rate_is_live("torch", "lr", json!({"max_iter": 3, "line_search_fn": "strong_wolfe"}));
    rate_is_live("optax", "learning_rate", json!({}));
    rate_is_live("optax", "learning_rate", json!({"linesearch": null}));
}

#[test]
fn bad_arguments_are_refused() {
    let shapes = vec![vec![3]];
    let bad = [
        ("torch", json!({"line_search_fn": "backtracking"})),
        ("torch", json!({"history_size": 0})),
        // torch's line search would get max_eval - 1 = -1 trials and fail on its unset bracket.
        ("torch", json!({"line_search_fn": "strong_wolfe", "max_eval": 0})),
        ("torch", json!({"lr": -1.0})),
        ("torch", json!({"max_iter": -1})),
        ("torch", json!({"tolerance_grad": "small"})),
        ("torch", json!({"betas": [0.9, 0.99]})),
        ("optax", json!({"memory_size": 0})),
        ("optax", json!({"learning_rate": -0.5})),
        // optax requires the number of trials.
        ("optax", json!({"linesearch": ["scale_by_backtracking_linesearch", {}]})),
        (
            "optax",
            json!({"linesearch": ["scale_by_backtracking_linesearch", {"max_backtracking_steps": 5, "verbose": true}]}),
        ),
        (
            "optax",
            json!({"linesearch": ["scale_by_backtracking_linesearch", {"max_backtracking_steps": 5, "tol": 0.1}]}),
        ),
        ("optax", json!({"linesearch": ["scale_by_zoom_linesearch", {}]})),
        ("optax", json!({"linesearch": ["scale_by_zoom_linesearch", {"max_linesearch_steps": 5, "curv_rtol": -1}]})),
        (
            "optax",
            json!({"linesearch": ["scale_by_zoom_linesearch", {"max_linesearch_steps": 5, "initial_guess_strategy": "two"}]}),
        ),
        ("optax", json!({"linesearch": ["scale_by_zoom_linesearch", {"max_linesearch_steps": 5, "bogus": 1}]})),
        ("optax", json!({"lr": 1.0})),
    ];
    for (lib, h) in bad {
        assert!(build_closure_optimizer(lib, "lbfgs", &h, &shapes).is_err(), "{lib} {h} accepted");
    }
    assert!(build_closure_optimizer("torch", "lbfgs", &json!({}), &[]).is_err(), "no parameters");
    let good = [
        ("torch", json!({"line_search_fn": null, "max_eval": null})),
        ("torch", json!({"line_search_fn": null, "max_eval": 0})),
        ("torch", json!({"line_search_fn": "strong_wolfe", "max_iter": 1})),
        ("torch", json!({"line_search_fn": "strong_wolfe", "history_size": 1, "max_iter": 0})),
        ("optax", json!({"learning_rate": null, "linesearch": null, "scale_init_precond": false})),
        (
            "optax",
            json!({"linesearch": ["scale_by_backtracking_linesearch", {"max_backtracking_steps": 15, "store_grad": true}]}),
        ),
        ("optax", json!({"linesearch": ["scale_by_backtracking_linesearch", {"max_backtracking_steps": 0}]})),
        (
            "optax",
            json!({"linesearch": ["scale_by_zoom_linesearch", {"max_linesearch_steps": 5, "max_learning_rate": 2.0,
                "initial_guess_strategy": "keep", "approx_dec_rtol": null}]}),
        ),
    ];
    for (lib, h) in good {
        build_closure_optimizer(lib, "lbfgs", &h, &shapes).unwrap_or_else(|e| panic!("{lib} {h}: {e}"));
    }
}

#[test]
fn shapes_are_checked_at_each_step() {
    let mut opt = build_closure_optimizer("torch", "lbfgs", &json!({}), &[vec![3]]).unwrap();
    let mut f = |_: &[Vec<f32>], _: &mut [Vec<f32>]| -> Result<f32> { Ok(0.0) };
    assert!(opt.step(&mut [vec![0.0; 2]], &mut f).is_err());
    let mut bad_grad = |_: &[Vec<f32>], g: &mut [Vec<f32>]| -> Result<f32> {
        g[0].push(1.0);
        Ok(0.0)
    };
    assert!(opt.step(&mut [vec![0.0; 3]], &mut bad_grad).is_err());
}

/// Every variant minimizes a convex quadratic `½ Σ c_j (x_j − 1)²`.
#[test]
fn every_variant_minimizes_a_quadratic() {
    let c = [1.0f32, 3.0, 10.0, 0.5];
    let quad = |p: &[Vec<f32>], g: &mut [Vec<f32>]| -> Result<f32> {
        let mut l = 0.0;
        for j in 0..4 {
            let r = p[0][j] - 1.0;
            l += 0.5 * c[j] * r * r;
            g[0][j] = c[j] * r;
        }
        Ok(l)
    };
    let variants = [
        ("torch", json!({})),
        ("torch", json!({"line_search_fn": "strong_wolfe"})),
        ("optax", json!({})),
        ("optax", json!({"scale_init_precond": false})),
        ("optax", json!({"linesearch": ["scale_by_zoom_linesearch", {"max_linesearch_steps": 10}]})),
        ("optax", json!({"linesearch": ["scale_by_backtracking_linesearch", {"max_backtracking_steps": 15}]})),
    ];
    for (lib, h) in variants {
        let mut opt = build_closure_optimizer(lib, "lbfgs", &h, &[vec![4]]).unwrap();
        let mut p = vec![vec![3.0f32, -2.0, 0.5, 4.0]];
        let mut f = quad;
        for _ in 0..30 {
            opt.step(&mut p, &mut f).unwrap();
        }
        for &x in &p[0] {
            assert!((x - 1.0).abs() < 1e-3, "{lib} {h}: {:?}", p[0]);
        }
    }
}

/// The typed configs are a user's way in, as torch's and optax's constructors are: the same
/// optimizer as the registry builds from the same arguments (the same trajectory on the
/// Rosenbrock function), and the same refusals.
#[test]
fn typed_configs_build_what_the_registry_builds() {
    use descent_core::closure::{OptaxLbfgs, OptaxLbfgsConfig, TorchLbfgs, TorchLbfgsConfig};
    let shapes = vec![vec![2]];
    let mut typed: Vec<(Box<dyn ClosureOptimizer>, Box<dyn ClosureOptimizer>)> = vec![
        (
            Box::new(TorchLbfgs::new(TorchLbfgsConfig { history_size: 5, ..Default::default() }, &shapes).unwrap()),
            build_closure_optimizer("torch", "lbfgs", &json!({"history_size": 5}), &shapes).unwrap(),
        ),
        (
            Box::new(OptaxLbfgs::new(OptaxLbfgsConfig { memory_size: 4, ..Default::default() }, &shapes).unwrap()),
            build_closure_optimizer("optax", "lbfgs", &json!({"memory_size": 4}), &shapes).unwrap(),
        ),
    ];
    for (a, b) in typed.iter_mut() {
        let (mut pa, mut pb) = (vec![vec![-1.2f32, 1.0]], vec![vec![-1.2f32, 1.0]]);
        for _ in 0..5 {
            a.step(&mut pa, &mut Problem::Rosenbrock(Rosenbrock::new(2).unwrap())).unwrap();
            b.step(&mut pb, &mut Problem::Rosenbrock(Rosenbrock::new(2).unwrap())).unwrap();
        }
        assert_eq!(pa, pb);
    }
    assert!(TorchLbfgs::new(TorchLbfgsConfig { history_size: 0, ..Default::default() }, &shapes).is_err());
    assert!(OptaxLbfgs::new(OptaxLbfgsConfig { memory_size: 0, ..Default::default() }, &shapes).is_err());
}
