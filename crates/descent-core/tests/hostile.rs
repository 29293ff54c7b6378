//! Hostile or inconsistent input is an error naming what is wrong: shapes that overflow, recorded
//! step counts that disagree with the data, schedules stepped past their end, hyper-parameters
//! that are null or not finite.

use descent_core::replay::{parse_case, run_and_check, Case};
use descent_core::schedule::{
    chained, check_steps, constant_lr, exponential_lr, join, onecycle_lr, Anneal, OneCycleLr, Schedule,
};
use descent_core::spec::{build_optimizer, build_schedule, ScheduleSpec};
use descent_core::Error;
use serde_json::{json, Value};

fn parse_err(v: &Value) -> String {
    match parse_case("case.json", &v.to_string()) {
        Ok(_) => panic!("accepted: {v}"),
        Err(e) => e.to_string(),
    }
}

fn optim_case() -> Value {
    json!({
        "id": "torch.sgd.x", "source": "torch 2.15 torch.optim.SGD", "optimizer": "sgd", "hparams": {"lr": 0.1},
        "params": [{"shape": [2], "init": [1.0, 2.0]}],
        "grads": [[[0.5, -0.5]], [[0.25, 0.25]]],
        "expected": [[[0.95, 2.05]], [[0.925, 2.025]]],
        "steps": 2, "tolerance": {"rel": 1e-3, "abs": 4e-6}
    })
}

fn schedule_case() -> Value {
    json!({
        "id": "torch.onecycle", "source": "torch 2.15 torch.optim.lr_scheduler.OneCycleLR", "schedule": "OneCycleLR",
        "base_lr": 0.1, "kwargs": {"max_lr": 0.5, "total_steps": 4}, "steps": 4,
        "expected_lr": [0.02, 0.5, 0.25, 0.0]
    })
}

#[test]
fn the_valid_cases_here_parse_and_run() {
    let c = parse_case("case.json", &optim_case().to_string()).unwrap();
    assert!(run_and_check(&c).unwrap().passed);
    let c = parse_case("case.json", &schedule_case().to_string()).unwrap();
    run_and_check(&c).unwrap();
}

#[test]
fn a_shape_whose_product_overflows_is_an_error_before_anything_is_allocated() {
    for shape in [json!([4294967296u64, 4294967296u64]), json!([0, 4294967296u64, 4294967296u64])] {
        for opt in ["sgd", "adafactor"] {
            let mut v = optim_case();
            v["optimizer"] = json!(opt);
            v["params"][0]["shape"] = shape.clone();
            v["params"][0]["init"] = json!([]);
            v["grads"] = json!([[[]]]);
            v["expected"] = json!([[[]]]);
            v["steps"] = json!(1);
            let e = parse_err(&v);
            assert!(e.contains("case.json") && e.contains("params[0].shape") && e.contains("too large"), "{e}");
        }
    }
    let mut v = optim_case();
    v["source"] = json!("optax 0.2.8 optax.adafactor");
    v["id"] = json!("optax.adafactor.x");
    v["optimizer"] = json!("adafactor");
    v["params"][0]["shape"] = json!([4294967296u64, 4294967296u64]);
    let e = parse_err(&v);
    assert!(e.contains("params[0].shape") && e.contains("too large"), "{e}");
}

#[test]
fn shapes_and_step_data_must_agree() {
    let mut v = optim_case();
    v["params"][0]["shape"] = json!([3]);
    assert!(parse_err(&v).contains("params[0].init"));
    let mut v = optim_case();
    v["params"][0]["shape"] = json!([2, 0]);
    assert!(parse_err(&v).contains("params[0].init"));
    let mut v = optim_case();
    v["params"][0]["shape"] = json!([-2]);
    assert!(parse_err(&v).contains("params[0].shape"));
    let mut v = optim_case();
    v["grads"][1] = json!([[1.0]]);
    assert!(parse_err(&v).contains("grads[1][0]"));
    let mut v = optim_case();
    v["grads"][1] = json!([[1.0, 2.0], [3.0]]);
    assert!(parse_err(&v).contains("grads[1]"));
    let mut v = optim_case();
    v["expected"] = json!([[[0.95, 2.05]]]);
    assert!(parse_err(&v).contains("`expected`"));
    for (field, value) in [("params", json!([])), ("grads", json!([])), ("expected", json!([]))] {
        let mut v = optim_case();
        v[field] = value;
        let e = parse_err(&v);
        assert!(e.contains(&format!("`{field}`")), "{e}");
    }
    for steps in [json!(3), json!(-1), json!(1e30), json!(18446744073709551615u64), json!("2")] {
        let mut v = optim_case();
        v["steps"] = steps;
        let e = parse_err(&v);
        assert!(e.contains("`steps`"), "{e}");
    }
    let mut v = optim_case();
    v["tolerance"]["rel"] = json!(-1.0);
    assert!(parse_err(&v).contains("tolerance.rel"));
    let mut v = optim_case();
    v.as_object_mut().unwrap().remove("tolerance");
    assert!(parse_err(&v).contains("tolerance"));
    assert!(parse_err(&json!([1, 2])).contains("object"));
}

#[test]
fn a_schedule_case_s_steps_must_agree_with_its_learning_rates() {
    let mut v = schedule_case();
    v["steps"] = json!(5);
    let e = parse_err(&v);
    assert!(e.contains("`steps`") && e.contains("is 5") && e.contains("4 learning rates"), "{e}");
    let mut v = schedule_case();
    v["steps"] = json!(1u64 << 62);
    assert!(parse_err(&v).contains("`steps`"));
    let mut v = schedule_case();
    v["expected_lr"] = json!([]);
    v["steps"] = json!(0);
    assert!(parse_err(&v).contains("expected_lr"));
    let mut v = schedule_case();
    v["schedule"] = json!("ReduceLROnPlateau");
    v["metrics"] = json!([1.0, 2.0]);
    let e = parse_err(&v);
    assert!(e.contains("`metrics`") && e.contains("2 values for 4 steps"), "{e}");
    // No `steps` recorded: the learning rates say how many.
    let mut v = schedule_case();
    v.as_object_mut().unwrap().remove("steps");
    parse_case("case.json", &v.to_string()).unwrap();
}

/// torch raises `ValueError("Tried to step {t} times. The specified number of total steps is
/// {total_steps}")` when `OneCycleLR` is stepped past `total_steps`: a run takes at most
/// `total_steps` optimizer steps.
#[test]
fn onecycle_past_its_total_steps_is_an_error() {
    let mut v = schedule_case();
    v["kwargs"]["total_steps"] = json!(3);
    let c = parse_case("case.json", &v.to_string()).unwrap();
    let e = run_and_check(&c).unwrap_err();
    assert!(matches!(e, Error::TooManySteps { requested: 4, supported: 3 }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("Tried to step 4 times. The specified number of total steps is 3"), "{msg}");
    let Case::Schedule(c) = c else { unreachable!() };
    assert!(c.run().is_err());

    let s = onecycle_lr(OneCycleLr {
        max_lr: 0.5,
        total_steps: 100,
        pct_start: 0.3,
        anneal_strategy: Anneal::Cos,
        div_factor: 25.0,
        final_div_factor: 1e4,
        three_phase: false,
    })
    .unwrap();
    assert_eq!(s.max_steps(), Some(100));
    check_steps(&s, 100).unwrap();
    check_steps(&s, 0).unwrap();
    assert!(check_steps(&s, 101).is_err());
    assert!(check_steps(&s, u64::MAX).is_err());
}

fn schedule(lib: &str, name: &str, kw: Value) -> Box<dyn Schedule> {
    match build_schedule(lib, name, &kw, Some(0.1)).unwrap() {
        ScheduleSpec::Function(s) => s,
        ScheduleSpec::Plateau(_) => unreachable!(),
    }
}

#[test]
fn combined_schedules_support_what_their_parts_in_force_support() {
    // A composition of a OneCycleLR is refused by name (torch's constructor rewrites the rate the
    // others start from); the library's combinators still bound it by the steps it supports.
    let onecycle = || {
        onecycle_lr(OneCycleLr {
            max_lr: 0.5,
            total_steps: 10,
            pct_start: 0.3,
            anneal_strategy: Anneal::Cos,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
        })
        .unwrap()
    };
    let constant = || constant_lr(0.1, 1.0 / 3.0, 5).unwrap();
    let s = schedule("torch", "StepLR", json!({"step_size": 3}));
    assert_eq!(s.max_steps(), None);
    check_steps(&s, u64::MAX).unwrap();
    // OneCycleLR from step 5: ten steps of its own, so steps 0..15.
    assert_eq!(join(vec![constant(), onecycle()], vec![5]).max_steps(), Some(15));
    // OneCycleLR first, replaced at step 10: never stepped past its end.
    assert_eq!(join(vec![onecycle(), constant()], vec![10]).max_steps(), None);
    // Replaced at step 12 only: its end comes first.
    assert_eq!(join(vec![onecycle(), constant()], vec![12]).max_steps(), Some(10));
    assert_eq!(chained(0.1, vec![exponential_lr(0.1, 0.9), onecycle()]).max_steps(), Some(10));
    for (name, kw) in [
        (
            "SequentialLR",
            json!({"schedulers": [["ConstantLR", {}], ["OneCycleLR", {"max_lr": 0.5, "total_steps": 10}]], "milestones": [5]}),
        ),
        (
            "ChainedScheduler",
            json!({"schedulers": [["OneCycleLR", {"max_lr": 0.5, "total_steps": 10}], ["ExponentialLR", {"gamma": 0.9}]]}),
        ),
    ] {
        let e = build_schedule("torch", name, &kw, Some(0.1)).err().expect("refused").to_string();
        assert!(e.contains("OneCycleLR in a composition") && e.contains("initial_lr"), "{name}: {e}");
    }
}

#[test]
fn schedules_at_huge_steps_return_numbers_without_overflow_or_endless_loops() {
    for (name, kw) in [
        ("CosineAnnealingWarmRestarts", json!({"T_0": 1})),
        ("CosineAnnealingWarmRestarts", json!({"T_0": 1, "T_mult": 2})),
        ("CosineAnnealingWarmRestarts", json!({"T_0": 3, "T_mult": 1000})),
        ("CyclicLR", json!({"base_lr": 0.01, "max_lr": 0.1, "step_size_up": u64::MAX, "step_size_down": u64::MAX})),
        ("StepLR", json!({"step_size": 1, "gamma": 0.5})),
        ("ExponentialLR", json!({"gamma": 0.5})),
    ] {
        let s = schedule("torch", name, kw);
        for t in [0, 1, 1 << 40, u64::MAX - 1, u64::MAX] {
            let _ = s.value(t);
        }
    }
    let s = schedule("torch", "StepLR", json!({"step_size": 1, "gamma": 0.5}));
    assert_eq!(s.value(u64::MAX), 0.0);
    let e = match build_schedule(
        "torch",
        "OneCycleLR",
        &json!({"max_lr": 0.1, "epochs": u64::MAX, "steps_per_epoch": 2}),
        None,
    ) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("epochs") && e.contains("overflow"), "{e}");
}

fn build_err(lib: &str, name: &str, h: Value) -> String {
    match build_optimizer(lib, name, &h, None, &[vec![2, 2]]) {
        Ok(_) => panic!("{lib}.{name} {h} was accepted"),
        Err(e) => e.to_string(),
    }
}

/// `serde_json::json!(f64::NAN)` is `null`: a null hyper-parameter is an error naming it, never
/// the default, unless the library takes `None` for it.
#[test]
fn null_or_non_finite_hyper_parameters_are_errors_naming_them() {
    assert_eq!(json!(f64::NAN), Value::Null);
    for (lib, name, h, key) in [
        ("torch", "adam", json!({"lr": f64::NAN}), "`lr`"),
        ("torch", "adam", json!({"lr": 0.1, "eps": f64::INFINITY}), "`eps`"),
        ("torch", "adam", json!({"betas": [0.9, f64::NAN]}), "`betas`"),
        ("torch", "sgd", json!({"lr": 0.1, "momentum": null}), "`momentum`"),
        ("torch", "sgd", json!({"lr": 0.1, "maximize": null}), "`maximize`"),
        ("torch", "adafactor", json!({"eps": [null, null]}), "`eps`"),
        ("torch", "adafactor", json!({"eps": null}), "`eps`"),
        ("torch", "muon", json!({"ns_steps": null}), "`ns_steps`"),
        ("optax", "adam", json!({"learning_rate": null}), "`learning_rate`"),
        ("optax", "adamw", json!({"learning_rate": 0.1, "weight_decay": f64::NAN}), "`weight_decay`"),
        ("optax", "contrib.muon", json!({"learning_rate": null}), "`learning_rate`"),
        ("optax", "contrib.dog", json!({"init_step": ["heuristic", null]}), "init_step"),
        ("optax", "chain", json!({"links": [["scale", {"step_size": null}]]}), "`step_size`"),
        ("optax", "adam", json!({"learning_rate": {"schedule": "constant_schedule", "value": null}}), "`value`"),
        ("descent", "adamw8bit", json!({"lr": null}), "`lr`"),
    ] {
        let e = build_err(lib, name, h.clone());
        assert!(e.contains(key), "{lib}.{name} {h}: {e}");
    }
    // torch 2.15's implementation flags where its constructor takes them, refused where it raises
    // (a TypeError: no such keyword).
    for (name, flag) in [("sgd", "fused"), ("adam", "capturable"), ("adagrad", "fused"), ("adadelta", "capturable")] {
        build_optimizer("torch", name, &json!({ flag: false }), None, &[vec![2, 2]])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, flag) in [
        ("sgd", "capturable"),
        ("adagrad", "capturable"),
        ("adadelta", "fused"),
        ("rprop", "fused"),
        ("muon", "use_addmm"),
    ] {
        let e = build_err("torch", name, json!({ flag: false }));
        assert!(e.contains(flag) && e.contains("unknown"), "{name} {flag}: {e}");
    }
    // The libraries' Optional arguments take None.
    for (lib, name, h) in [
        ("torch", "adam", json!({"lr": 0.1, "foreach": null, "fused": null})),
        ("torch", "adafactor", json!({"eps": [null, 1e-3]})),
        ("torch", "muon", json!({"adjust_lr_fn": null})),
        ("optax", "sgd", json!({"learning_rate": 0.1, "momentum": null})),
        ("optax", "adam", json!({"learning_rate": 0.1, "mu_dtype": null})),
        ("optax", "adafactor", json!({"learning_rate": null, "clipping_threshold": null, "momentum": null})),
        ("optax", "contrib.muon", json!({"learning_rate": 0.1, "adam_learning_rate": null})),
    ] {
        build_optimizer(lib, name, &h, None, &[vec![2, 2]]).unwrap_or_else(|e| panic!("{lib}.{name} {h}: {e}"));
    }
    let e = match build_schedule("torch", "StepLR", &json!({"step_size": 2, "gamma": null}), Some(0.1)) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("`gamma`") && e.contains("null"), "{e}");
    let e = match build_schedule("torch", "MultiStepLR", &json!({"milestones": [2, null]}), Some(0.1)) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("`milestones`"), "{e}");
    assert!(build_schedule("torch", "OneCycleLR", &json!({"max_lr": 0.1, "total_steps": null}), None).is_err());
}

/// optax Polyak SGD on the Rosenbrock function of 3 variables from (½, ½, ½), capped at 10⁻³.
fn problem_case() -> Value {
    json!({
        "id": "optax.polyak_sgd.rosenbrock", "source": "optax 0.2.8 optax.polyak_sgd", "optimizer": "polyak_sgd",
        "hparams": {"max_learning_rate": 0.001}, "problem": {"kind": "rosenbrock", "m": 3},
        "params": [{"shape": [3], "init": [0.5, 0.5, 0.5]}],
        "expected": [[[0.5509999990463257, 0.5009999871253967, 0.44999998807907104]],
                     [[0.5954047441482544, 0.5023975968360901, 0.41020017862319946]]],
        "expected_loss": [8.307298306090619, 5.088458035364357],
        "steps": 2, "tolerance": {"rel": 1e-3, "abs": 4e-6}
    })
}

fn softmax_case() -> Value {
    let mut v = problem_case();
    v["problem"] = json!({"kind": "softmax_regression", "n": 2, "d": 2, "k": 3, "x": [1.0, 0.5, -0.5, 2.0],
                          "y": [0, 2], "l2": 0.01});
    let (w, b) = (vec![0.0; 6], vec![0.0; 3]);
    v["params"] = json!([{"shape": [2, 3], "init": w}, {"shape": [3], "init": b}]);
    v["expected"] = json!([[w, b], [w, b]]);
    v.as_object_mut().unwrap().remove("expected_loss");
    v
}

#[test]
fn a_problem_case_parses_and_replays() {
    let c = parse_case("case.json", &problem_case().to_string()).unwrap();
    let r = run_and_check(&c).unwrap();
    assert!(r.passed, "{r:?}");
    let Case::Problem(p) = c else { panic!("not a problem case") };
    assert_eq!((p.problem.kind(), p.shapes.clone(), p.expected.len()), ("rosenbrock", vec![vec![3]], 2));
    // Parsed, replayed, and (its expected trajectory being made up) failed, not refused.
    let c = parse_case("case.json", &softmax_case().to_string()).unwrap();
    assert!(!run_and_check(&c).unwrap().passed);
}

/// A change to a case, and what its parse error must name.
type Edit = (fn(&mut Value), &'static str);

#[test]
fn malformed_problem_cases_are_errors_naming_the_field() {
    let edits: Vec<Edit> = vec![
        (|v| v["problem"] = json!("rosenbrock"), "`problem`"),
        (|v| v["problem"]["kind"] = json!("beale"), "problem.kind"),
        (|v| v["problem"]["kind"] = json!(3), "problem.kind"),
        (|v| v["problem"] = json!({"m": 3}), "problem.kind"),
        (|v| v["problem"]["m"] = json!(0), "problem.m"),
        (|v| v["problem"]["m"] = json!(-3), "problem.m"),
        (|v| v["problem"]["m"] = json!("3"), "problem.m"),
        (|v| v["problem"]["m"] = json!(1u64 << 62), "`params`"),
        (|v| v["problem"]["m"] = json!(4), "`params`"),
        (|v| v["problem"]["n"] = json!(2), "problem.n"),
        (|v| v["grads"] = json!([[[0.0, 0.0, 0.0]]]), "`grads`"),
        (|v| v["lr_per_step"] = json!([0.1, 0.1]), "`lr_per_step`"),
        (|v| v["expected_loss"] = json!([1.0]), "`expected_loss`"),
        (|v| v["expected_loss"] = json!([1.0, "x"]), "`expected_loss`"),
        (|v| v["expected"] = json!([[[0.5, 0.5]]]), "expected[0][0]"),
        (|v| v["steps"] = json!(3), "`steps`"),
        (|v| v["tolerance"] = json!({"rel": 1e-3}), "tolerance.abs"),
    ];
    for (edit, needle) in edits {
        let mut v = problem_case();
        edit(&mut v);
        let e = parse_err(&v);
        assert!(e.starts_with("case.json") && e.contains(needle) && !e.contains('\n'), "{needle}: {e}");
    }
    let edits: Vec<Edit> = vec![
        (|v| v["problem"]["x"] = json!([1.0, 0.5, -0.5]), "problem.x"),
        (|v| v["problem"]["x"] = json!([1.0, 0.5, "a", 2.0]), "problem.x"),
        (|v| v["problem"]["y"] = json!([0, 3]), "problem.y[1]"),
        (|v| v["problem"]["y"] = json!([0]), "problem.y"),
        (|v| v["problem"]["y"] = json!([0, -1]), "problem.y[1]"),
        (|v| v["problem"]["l2"] = json!(-0.1), "problem.l2"),
        (|v| v["problem"]["l2"] = Value::Null, "problem.l2"),
        (|v| v["problem"]["k"] = json!(4), "`params`"),
        (|v| v["problem"]["d"] = json!(1u64 << 40), "problem"),
        (|v| v["problem"]["n"] = json!(1u64 << 62), "problem.x"),
        (|v| v["problem"]["k"] = json!(0), "problem.k"),
        (|v| drop(v["problem"].as_object_mut().unwrap().remove("y")), "problem.y"),
    ];
    for (edit, needle) in edits {
        let mut v = softmax_case();
        edit(&mut v);
        let e = parse_err(&v);
        assert!(e.starts_with("case.json") && e.contains(needle) && !e.contains('\n'), "{needle}: {e}");
    }
}

/// `expected_loss` must be the objective at the expected parameters: a replay of a case whose
/// losses disagree is an error naming the step, whatever the trajectory.
#[test]
fn an_expected_loss_the_objective_does_not_give_is_an_error() {
    let mut v = problem_case();
    v["expected_loss"][1] = json!(5.0885);
    let c = parse_case("case.json", &v.to_string()).unwrap();
    let e = run_and_check(&c).unwrap_err().to_string();
    assert!(e.contains("expected_loss[1]") && e.contains("rosenbrock"), "{e}");
    // A closure optimizer the registry does not have is a replay error naming it.
    let mut v = problem_case();
    v["optimizer"] = json!("polyak_sgdd");
    let c = parse_case("case.json", &v.to_string()).unwrap();
    let e = run_and_check(&c).unwrap_err().to_string();
    assert!(e.contains("optax.polyak_sgdd"), "{e}");
}

/// Bounds given the wrong way round clip as `torch.clamp` and `jnp.clip` do (to the upper one),
/// never a panic: torch `Rprop` with `step_sizes = (1, 0.1)` moves every step by 0.1, optax
/// `clip` with a negative `max_delta` sets every update to it, and optax `rprop` with
/// `min_step_size > max_step_size` steps by the maximum.
#[test]
fn bounds_the_wrong_way_round_clip_to_the_upper_one() {
    use descent_core::optimizer::Optimizer;
    let run = |lib: &str, name: &str, h: Value| -> Vec<f32> {
        let tx = build_optimizer(lib, name, &h, None, &[vec![2]]).unwrap();
        let mut p = vec![vec![0.0f32, 0.0]];
        let mut opt = Optimizer::new(tx, vec![vec![2]], &[&p[0]]).unwrap();
        let mut trail = vec![];
        for _ in 0..3 {
            opt.step_vecs(&mut p, &[vec![1.0, -2.0]]).unwrap();
            trail.extend(p[0].iter().copied());
        }
        trail
    };
    let rprop = run("torch", "rprop", json!({"lr": 0.5, "step_sizes": [1.0, 0.1]}));
    assert_eq!(rprop, [-0.1, 0.1, -0.2, 0.2, -0.3, 0.3].map(|x: f32| x).to_vec());
    let clip = run("optax", "clip", json!({"max_delta": -1.0}));
    assert_eq!(clip, [-1.0, -1.0, -2.0, -2.0, -3.0, -3.0].to_vec());
    let optax_rprop = run("optax", "rprop", json!({"learning_rate": 0.5, "min_step_size": 1.0, "max_step_size": 0.1}));
    assert!(optax_rprop.iter().all(|x| x.is_finite()), "{optax_rprop:?}");
}

/// A misspelt field of a case (`hparms`) is named as one no replay reads; the known ones are not.
#[test]
fn unknown_case_fields_are_named() {
    use descent_core::replay::unknown_fields;
    let case = json!({"id": "torch.sgd.x", "optimizer": "SGD", "hparms": {"lr": 0.1}, "params": [], "note": "n"});
    assert_eq!(unknown_fields(&case.to_string()), vec!["hparms".to_string()]);
    assert!(unknown_fields("not json").is_empty());
}

#[test]
fn a_field_of_another_kind_of_case_is_refused_not_ignored() {
    for (field, value) in [
        ("kwargs", json!({"lr": 5.0})),
        ("base_lr", json!(3.0)),
        ("metrics", json!([1.0, 2.0])),
        ("expected_loss", json!([1.0, 2.0])),
    ] {
        let mut c = optim_case();
        c[field] = value;
        let e = parse_err(&c);
        assert!(e.contains(&format!("`{field}`")) && e.contains("case"), "{field}: {e}");
    }
    let mut s = schedule_case();
    s["tolerance"] = json!({"rel": 1e9, "abs": 1e9});
    let e = parse_err(&s);
    assert!(e.contains("`tolerance`") && e.contains("fixed"), "{e}");
    let mut c = optim_case();
    c["params"][0]["dtype"] = json!("bfloat16");
    let e = parse_err(&c);
    assert!(e.contains("params[0].dtype"), "{e}");
    let mut c = optim_case();
    c["tolerance"]["relx"] = json!(1.0);
    let e = parse_err(&c);
    assert!(e.contains("tolerance.relx"), "{e}");
}

#[test]
fn a_key_given_twice_in_a_case_is_refused_wherever_it_is() {
    let text = optim_case().to_string();
    let twice = format!("{}, \"hparams\": {{\"lr\": 5.0}}}}", &text[..text.len() - 1]);
    let e = parse_case("case.json", &twice).unwrap_err().to_string();
    assert!(e.contains("key `hparams` given twice"), "{e}");
    let inner = text.replacen("\"lr\":0.1", "\"lr\":0.1,\"lr\":0.2", 1);
    assert_ne!(inner, text);
    let e = parse_case("case.json", &inner).unwrap_err().to_string();
    assert!(e.contains("key `lr` given twice"), "{e}");
}

#[test]
fn ids_that_would_garble_a_report_and_negative_torch_base_rates_are_refused() {
    for id in ["torch.sgd.x\n1 passed, 0 failed", "torch.sgd.\u{202e}x", "torch.sgd.\u{0}"] {
        let mut c = optim_case();
        c["id"] = json!(id);
        let e = parse_err(&c);
        assert!(e.contains("`id`") && e.contains("character"), "{e}");
    }
    let mut s = schedule_case();
    s["base_lr"] = json!(-0.1);
    let e = parse_err(&s);
    assert!(e.contains("base_lr") && e.contains("negative"), "{e}");
}

#[test]
fn an_inject_hyperparams_inner_rate_must_be_the_first_recorded_one() {
    let case = |inner_lr: f64| {
        json!({
            "id": "optax.inject_hyperparams.sgd", "source": "optax 0.2.8", "optimizer": "inject_hyperparams",
            "hparams": {"inner": ["sgd", {"learning_rate": inner_lr}]},
            "params": [{"shape": [2], "init": [1.0, 2.0]}],
            "grads": [[[0.5, -0.5]], [[0.25, 0.25]]],
            "expected": [[[0.95, 2.05]], [[0.9, 2.0]]],
            "lr_per_step": [0.1, 0.2], "steps": 2, "tolerance": {"rel": 1e-3, "abs": 4e-6}
        })
    };
    let Case::Optim(ok) = parse_case("case.json", &case(0.1).to_string()).unwrap() else { panic!() };
    ok.run().unwrap();
    let Case::Optim(bad) = parse_case("case.json", &case(0.5).to_string()).unwrap() else { panic!() };
    let e = bad.run().unwrap_err().to_string();
    assert!(e.contains("disagrees with lr_per_step[0]"), "{e}");
}

#[test]
fn optax_schedules_optax_refuses_are_refused() {
    for (name, kw, field) in [
        ("cosine_decay_schedule", json!({"init_value": 0.1, "decay_steps": 0}), "decay_steps"),
        (
            "warmup_cosine_decay_schedule",
            json!({"init_value": 0.0, "peak_value": 0.1, "warmup_steps": 10, "decay_steps": 10}),
            "decay_steps",
        ),
        ("linear_onecycle_schedule", json!({"transition_steps": 0, "peak_value": 0.1}), "transition_steps"),
        ("cosine_onecycle_schedule", json!({"transition_steps": 0, "peak_value": 0.1}), "transition_steps"),
        (
            "cosine_onecycle_schedule",
            json!({"transition_steps": 10, "peak_value": 0.1, "div_factor": 0.0}),
            "div_factor",
        ),
        (
            "linear_onecycle_schedule",
            json!({"transition_steps": 10, "peak_value": 0.1, "final_div_factor": 0.0}),
            "final_div_factor",
        ),
    ] {
        let e = match build_schedule("optax", name, &kw, None) {
            Ok(_) => panic!("{name} {kw} accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(&format!("`{field}`")), "{name}: {e}");
    }
}

#[test]
fn torch_schedules_torch_refuses_or_mis_steps_are_refused() {
    let base = Some(0.1);
    let cyc = json!(["CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2}]);
    for (name, kw, field) in [
        ("StepLR", json!({"step_size": 2, "verbose": false}), "verbose"),
        ("ReduceLROnPlateau", json!({"last_epoch": -1}), "last_epoch"),
        ("ChainedScheduler", json!({"schedulers": [cyc.clone()], "last_epoch": -1}), "last_epoch"),
        ("ConstantLR", json!({"factor": 0.0, "total_iters": 3}), "factor"),
        ("CyclicLR", json!({"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 0, "step_size_down": 4}), "step_size_up"),
        ("OneCycleLR", json!({"max_lr": 0.1, "total_steps": 10, "div_factor": 0.0}), "div_factor"),
        ("OneCycleLR", json!({"max_lr": [0.1, 0.2], "total_steps": 10}), "max_lr"),
        ("PolynomialLR", json!({"total_iters": 4, "power": -1.0}), "power"),
        (
            "SequentialLR",
            json!({"schedulers": [["ExponentialLR", {"gamma": 0.9}], ["ConstantLR", {"total_iters": 0}]], "milestones": [3]}),
            "schedulers",
        ),
        (
            "SequentialLR",
            json!({"schedulers": [["ExponentialLR", {"gamma": 0.9}], ["ExponentialLR", {"gamma": 0.5}], ["ExponentialLR", {"gamma": 0.8}]], "milestones": [6, 3]}),
            "milestones",
        ),
        (
            "ChainedScheduler",
            json!({"schedulers": [["ChainedScheduler", {"schedulers": [cyc.clone()]}]]}),
            "schedulers",
        ),
    ] {
        let e = match build_schedule("torch", name, &kw, base) {
            Ok(_) => panic!("{name} {kw} accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(field), "{name} {kw}: {e}");
    }
    // What torch accepts is honoured: a one-element list per group, epochs beside total_steps.
    for (name, kw) in [
        ("OneCycleLR", json!({"max_lr": [0.1], "total_steps": 10, "epochs": 3, "steps_per_epoch": 2})),
        ("CyclicLR", json!({"base_lr": [0.01], "max_lr": [0.1], "step_size_up": 2})),
        ("ReduceLROnPlateau", json!({"min_lr": [0.001]})),
        ("MultiStepLR", json!({"milestones": [-3, 2]})),
    ] {
        assert!(build_schedule("torch", name, &kw, base).is_ok(), "{name} {kw} refused");
    }
}

/// The typed optax schedules refuse what optax raises on (a NaN rate would otherwise reach every
/// step): `decay_steps` of 0, a warm-up as long as the decay, negative interpolation scales, a
/// one-cycle of 0 steps.
#[test]
fn typed_schedules_refuse_what_optax_raises_on() {
    use descent_core::schedule::*;
    let cos = |decay_steps| cosine_decay(CosineDecay { init_value: 1.0, decay_steps, alpha: 0.0, exponent: 1.0 });
    assert!(cos(0).is_err());
    assert!(cos(10).is_ok());
    let warm = |warmup_steps, decay_steps| {
        warmup_cosine_decay(WarmupCosineDecay {
            init_value: 0.0,
            peak_value: 1.0,
            warmup_steps,
            decay_steps,
            end_value: 0.0,
            exponent: 1.0,
        })
    };
    for (w, d) in [(10, 10), (10, 5)] {
        assert!(warm(w, d).err().unwrap().to_string().contains("must exceed warmup_steps"));
    }
    assert!((0..30).all(|t| warm(10, 11).unwrap().value(t).is_finite()));
    assert!(piecewise_interpolate(Interpolation::Linear, 1.0, vec![(5, -1.0)]).is_err());
    let one = |transition_steps| {
        cosine_onecycle(CosineOnecycle {
            transition_steps,
            peak_value: 1.0,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
        })
    };
    assert!(one(0).is_err() && one(10).is_ok());
}

/// optax `lookahead(reset_state=True)` resets the fast state arithmetically at a sync,
/// `(1 − sync)·state + sync·init`: an entry that had become infinite is NaN after it, a finite
/// one is its initial value, the counts start again.
#[test]
fn lookahead_reset_turns_a_non_finite_fast_state_into_nan() {
    use descent_core::optimizer::Optimizer;
    use descent_core::spec::build_optimizer;
    let h = serde_json::json!({"sync_period": 1, "slow_step_size": 0.5, "reset_state": true,
                               "inner": ["adam", {"learning_rate": 0.1}]});
    let shapes = vec![vec![2]];
    let init = [0.5f32, -0.5];
    let tx = build_optimizer("optax", "lookahead", &h, None, &shapes).unwrap();
    let mut opt = Optimizer::new(tx, shapes, &[&init]).unwrap();
    let mut p = vec![init.to_vec()];
    opt.step_vecs(&mut p, &[vec![f32::INFINITY, 1.0]]).unwrap();
    let state = opt.state_dict().unwrap();
    let mu = state.buffers.iter().find(|(k, _)| k.ends_with("mu.0")).map(|(_, v)| v.clone()).unwrap();
    assert!(mu[0].is_nan() && mu[1] == 0.0, "{mu:?}");
    let count = state.counters.iter().find(|(k, _)| k.ends_with("count")).map(|(_, v)| *v).unwrap();
    assert_eq!(count, 0);
}

/// Per-step rates (`inject_hyperparams`' list) under a wrapper that does not update its inner
/// optimizer once a step are refused, naming the wrapper: they would be read at the inner count.
#[test]
fn per_step_rates_under_a_wrapper_that_skips_steps_are_refused() {
    use descent_core::spec::build_optimizer;
    let inner = serde_json::json!(["inject_hyperparams", {"inner": ["sgd", {"learning_rate": [0.1, 0.05, 0.0]}]}]);
    for (name, h) in [
        (
            "lookahead",
            serde_json::json!({"sync_period": 2, "slow_step_size": 0.5, "reset_state": true, "inner": inner}),
        ),
        ("multisteps", serde_json::json!({"every_k": 2, "inner": inner})),
    ] {
        let e = build_optimizer("optax", name, &h, None, &[vec![2]]).err().expect("refused").to_string();
        assert!(e.contains(&format!("optax.{name}")) && e.contains("per-step"), "{e}");
    }
    let kept = serde_json::json!({"sync_period": 2, "slow_step_size": 0.5, "inner": inner});
    assert!(build_optimizer("optax", "lookahead", &kept, None, &[vec![2]]).is_ok());
}

/// A transformation stepped directly, optax's `init`/`update` without an `Optimizer` to check the
/// parameters: an update before `init`, or of other sizes than `init` was given, is an error
/// naming it, never an index out of the state's range — for the fused elementwise rules and for
/// those with an update of their own (torch's Adafactor and Muon, pytorch_optimizer's Shampoo).
#[test]
fn a_transformation_updated_before_init_or_with_other_sizes_is_an_error() {
    use descent_core::transforms::{ScaleByAdam, ScaleByAdamConfig};
    use descent_core::Transform;
    let mut built: Vec<(&str, Box<dyn Transform>)> = vec![
        ("scale_by_adam", Box::new(ScaleByAdam::new(ScaleByAdamConfig::default()))),
        ("torch.adafactor", build_optimizer("torch", "adafactor", &json!({}), None, &[vec![2, 2]]).unwrap()),
        ("torch.muon", build_optimizer("torch", "muon", &json!({}), None, &[vec![2, 2]]).unwrap()),
        ("po.shampoo", build_optimizer("po", "shampoo", &json!({}), None, &[vec![2, 2]]).unwrap()),
    ];
    for (name, tx) in built.iter_mut() {
        let e = tx.update(&mut [vec![1.0; 4]], &[&[0.0; 4]]).expect_err(name).to_string();
        assert!(e.contains("before init"), "{name}: {e}");
        tx.init(&[vec![2, 2]], &[&[0.0; 4]]).unwrap();
        let e = tx.update(&mut [vec![1.0; 6]], &[&[0.0; 6]]).expect_err(name).to_string();
        assert!(e.contains('6') && e.contains('4'), "{name}: {e}");
        let e = tx.update(&mut [vec![1.0; 4], vec![1.0; 4]], &[&[0.0; 4], &[0.0; 4]]).expect_err(name).to_string();
        assert!(e.contains("2"), "{name}: {e}");
        tx.update(&mut [vec![1.0; 4]], &[&[0.0; 4]]).unwrap();
    }
}
