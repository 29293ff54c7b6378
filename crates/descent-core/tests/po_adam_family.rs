//! pytorch_optimizer's Adam family (`po.adabound` … `po.yogi`): exact resume of the reference
//! runs, every documented option steps to finite values, `maximize` is descent on the negated
//! gradient, and bad arguments are refused naming the field.

mod common;

use descent_core::replay::{collect_case_files, load_case, Case};
use descent_core::spec::build_optimizer;
use descent_core::state::StateDict;
use descent_core::Optimizer;
use serde_json::{json, Value};

const FAMILY: &[&str] = &[
    "adabelief",
    "adabound",
    "adafactor",
    "adamp",
    "adan",
    "came",
    "diffgrad",
    "lamb",
    "laprop",
    "lion",
    "mars",
    "qhadam",
    "ranger",
    "sgdp",
    "stableadamw",
    "tiger",
    "yogi",
];

fn in_family(id: &str) -> bool {
    FAMILY.iter().any(|n| id.starts_with(&format!("po.{n}.")))
}

/// A run of the case's gradients, stopped after step `stop_at`, saved through JSON text and
/// resumed in a freshly built optimizer.
fn run(case: &descent_core::replay::OptimCase, stop_at: Option<usize>) -> Vec<Vec<f32>> {
    let mut opt = case.optimizer().unwrap();
    let mut params = case.init.clone();
    for (t, g) in case.grads.iter().enumerate() {
        if Some(t) == stop_at {
            let text = opt.state_dict().unwrap().to_json().unwrap();
            opt = case.optimizer().unwrap();
            opt.load_state_dict(&StateDict::from_json(&text).unwrap()).unwrap();
        }
        opt.step_vecs(&mut params, g).unwrap();
    }
    params
}

#[test]
fn resume_is_bit_exact_for_the_reference_runs() {
    let files = collect_case_files(&[common::shared_dir("reference-po"), common::shared_dir("reference-r2")]).unwrap();
    let mut checked = 0;
    for f in files {
        if !in_family(&f.file_stem().unwrap().to_string_lossy()) {
            continue;
        }
        let Case::Optim(c) = load_case(&f).unwrap() else { continue };
        let full = run(&c, None);
        for k in [1, c.grads.len() / 2, c.grads.len() - 1] {
            let resumed = run(&c, Some(k));
            for (a, b) in full.iter().flatten().zip(resumed.iter().flatten()) {
                assert_eq!(a.to_bits(), b.to_bits(), "{}: resumed after step {k} differs", c.id);
            }
        }
        checked += 1;
    }
    assert!(checked >= 18, "only {checked} cases checked");
}

fn shapes() -> Vec<Vec<usize>> {
    vec![vec![4, 3], vec![5], vec![2, 2, 3], vec![], vec![0, 7]]
}

fn grads(t: usize) -> Vec<Vec<f32>> {
    shapes()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n: usize = s.iter().product();
            (0..n).map(|j| ((t * 7 + j * 3 + i * 5) % 11) as f32 / 5.0 - 1.0 + 0.05 * (j as f32).sin()).collect()
        })
        .collect()
}

fn init() -> Vec<Vec<f32>> {
    shapes()
        .iter()
        .map(|s| {
            let n: usize = s.iter().product();
            (0..n).map(|j| (j as f32 * 0.7).cos() * 0.5).collect()
        })
        .collect()
}

fn steps(name: &str, h: &Value, grads_of: impl Fn(usize) -> Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    let tx = build_optimizer("po", name, h, None, &shapes()).unwrap_or_else(|e| panic!("{name} {h}: {e}"));
    let mut params = init();
    let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    let mut opt = Optimizer::new(tx, shapes(), &views).unwrap();
    for t in 0..12 {
        if t == 6 {
            opt.set_learning_rate(0.005).unwrap();
        }
        opt.step_vecs(&mut params, &grads_of(t)).unwrap();
    }
    params
}

/// Every documented option, alone: the run stays finite and moves the parameters.
#[test]
fn every_option_steps_to_finite_values() {
    let decay = |extra: Value| {
        let mut all = vec![
            json!({"weight_decay": 0.1}),
            json!({"weight_decay": 0.1, "weight_decouple": false}),
            json!({"weight_decay": 0.1, "fixed_decay": true}),
        ];
        if let Value::Array(a) = extra {
            all.extend(a);
        }
        all
    };
    let options: Vec<(&str, Vec<Value>)> = vec![
        ("adabound", decay(json!([{"ams_bound": true}, {"final_lr": 0.05, "gamma": 0.01}]))),
        ("adamp", decay(json!([{"nesterov": true}, {"delta": 2.0}, {"adam_debias": true}]))),
        ("sgdp", decay(json!([{"momentum": 0.9}, {"momentum": 0.9, "nesterov": true}, {"delta": 2.0}]))),
        ("came", decay(json!([{"ams_bound": true}, {"clip_threshold": 0.5}]))),
        (
            "laprop",
            decay(
                json!([{"centered": true}, {"centered": true, "steps_before_using_centered": 2}, {"ams_bound": true}]),
            ),
        ),
        (
            "mars",
            vec![
                json!({"mars_type": "lion"}),
                json!({"mars_type": "shampoo"}),
                json!({"mars_type": "shampoo", "optimize_1d": true}),
                json!({"optimize_1d": true}),
                json!({"ams_bound": true}),
                json!({"cautious": true}),
                json!({"weight_decay": 0.1, "weight_decouple": false}),
                json!({"fixed_decay": true, "weight_decay": 0.1}),
                json!({"lr_1d": 0.001, "betas_1d": [0.8, 0.9], "weight_decay_1d": 0.0}),
            ],
        ),
        ("qhadam", decay(json!([{"nus": [0.7, 0.9]}]))),
        (
            "ranger",
            decay(
                json!([{"use_gc": false}, {"gc_conv_only": true}, {"degenerated_to_sgd": true}, {"k": 2, "alpha": 0.8}]),
            ),
        ),
        (
            "stableadamw",
            vec![json!({"weight_decay": 0.0}), json!({"weight_decouple": false}), json!({"kahan_sum": false})],
        ),
        ("tiger", decay(json!([{"beta": 0.9}]))),
        (
            "adabelief",
            decay(json!([{"rectify": true}, {"rectify": true, "degenerated_to_sgd": false}, {"ams_bound": true}])),
        ),
        (
            "adafactor",
            decay(json!([
                {"betas": [null, 0.999]},
                {"ams_bound": true},
                {"scale_parameter": false},
                {"relative_step": false},
                {"warmup_init": true},
                {"momentum_dtype": "float32"},
                {"clip_threshold": 0.5}
            ])),
        ),
        (
            "adan",
            vec![
                json!({"weight_decay": 0.1}),
                json!({"weight_decay": 0.1, "weight_decouple": true}),
                json!({"max_grad_norm": 0.5}),
            ],
        ),
        (
            "lamb",
            decay(json!([
                {"rectify": true},
                {"rectify": true, "degenerated_to_sgd": true},
                {"grad_averaging": false},
                {"adam": true},
                {"pre_norm": true},
                {"adam_debias": true}
            ])),
        ),
        ("lion", decay(json!([]))),
        ("yogi", decay(json!([{"initial_accumulator": 0.1}, {"adam_debias": true}]))),
        (
            "diffgrad",
            decay(json!([{"rectify": true}, {"rectify": true, "degenerated_to_sgd": false}, {"ams_bound": true}])),
        ),
    ];
    let base = init();
    for (name, opts) in options {
        for o in std::iter::once(json!({})).chain(opts) {
            let mut h = o.clone();
            h["lr"] = json!(0.01);
            let p = steps(name, &h, grads);
            assert!(p.iter().flatten().all(|x| x.is_finite()), "{name} {o}: {p:?}");
            assert!(p.iter().flatten().zip(base.iter().flatten()).any(|(a, b)| a != b), "{name} {o}: no move");
        }
    }
}

/// `maximize` ascends: the same run as descent on the negated gradients (Adan excepted: its
/// first difference starts from the raw gradient, before the library negates it).
#[test]
fn maximize_is_descent_on_the_negated_gradient() {
    for name in FAMILY.iter().filter(|n| **n != "adan") {
        let h = json!({"lr": 0.01, "maximize": true});
        let up = steps(name, &h, grads);
        let down =
            steps(name, &json!({"lr": 0.01}), |t| grads(t).iter().map(|g| g.iter().map(|x| -x).collect()).collect());
        for (a, b) in up.iter().flatten().zip(down.iter().flatten()) {
            assert_eq!(a.to_bits(), b.to_bits(), "{name}: {a} vs {b}");
        }
    }
}

#[test]
fn bad_arguments_are_refused_naming_the_field() {
    let err = |name: &str, h: Value| match build_optimizer("po", name, &h, None, &shapes()) {
        Ok(_) => panic!("po.{name} {h} accepted"),
        Err(e) => e.to_string(),
    };
    for name in FAMILY {
        let e = err(name, json!({"lr": -0.1}));
        assert!(e.contains("`lr`"), "{name}: {e}");
        let e = err(name, json!({"lr": 0.1, "no_such_option": 1}));
        assert!(e.contains("no_such_option"), "{name}: {e}");
        // AdaFactor's None is its relative step (tests/cases/po); without it there is no rate.
        let null = if *name == "adafactor" { json!({"lr": null, "relative_step": false}) } else { json!({"lr": null}) };
        let e = err(name, null);
        assert!(e.contains("`lr`"), "{name}: {e}");
    }
    for (name, h, field) in [
        ("adabound", json!({"betas": [1.0, 0.999]}), "`betas`"),
        ("came", json!({"betas": [0.9, 0.999]}), "`betas`"),
        ("adan", json!({"betas": [0.9, 0.9, 1.5]}), "`betas`"),
        ("adabelief", json!({"weight_decay": -1.0}), "`weight_decay`"),
        ("ranger", json!({"k": 0}), "`k`"),
        ("ranger", json!({"alpha": 1.5}), "`alpha`"),
        ("adamp", json!({"wd_ratio": 1.0}), "`wd_ratio`"),
        ("sgdp", json!({"momentum": 1.0}), "`momentum`"),
        ("mars", json!({"mars_type": "sgd"}), "`mars_type`"),
        ("qhadam", json!({"nus": [1.5, 1.0]}), "`nus`"),
        ("adafactor", json!({"momentum_dtype": "float16"}), "`momentum_dtype`"),
        ("adafactor", json!({"betas": [0.9]}), "`betas`"),
        ("tiger", json!({"beta": 1.0}), "`beta`"),
        ("yogi", json!({"eps": -1.0}), "`eps`"),
        // The constructor drops it (only a parameter group's reaches the step).
        ("adabound", json!({"adam_debias": true}), "`adam_debias`"),
    ] {
        let e = err(name, h.clone());
        assert!(e.contains(field), "{name} {h}: {e}");
    }
    // Norms over every parameter cannot be split into groups.
    let groups = json!([{"params": [0, 1]}, {"params": [2, 3, 4]}]);
    for (name, h) in [("adan", json!({"max_grad_norm": 1.0})), ("lamb", json!({"pre_norm": true}))] {
        assert!(build_optimizer("po", name, &h, Some(&groups), &shapes()).is_err(), "{name}");
    }
    build_optimizer("po", "adamp", &json!({"lr": 0.1}), Some(&groups), &shapes()).unwrap();
    let e = build_optimizer("po", "adabound", &json!({"adam_debias": false}), Some(&groups), &shapes());
    assert!(e.is_err(), "po.adabound: the constructor's adam_debias accepted with groups");
    let in_group = json!([{"params": [0, 1], "hparams": {"adam_debias": true}}, {"params": [2, 3, 4]}]);
    build_optimizer("po", "adabound", &json!({}), Some(&in_group), &shapes()).unwrap();
}

/// `param_groups`: each group steps as the optimizer built for its parameters alone with the
/// group's arguments, except those the library keeps on the optimizer (`maximize`, CAME's
/// `clip_threshold`, …), which a group cannot change.
#[test]
fn param_groups_step_as_separate_optimizers() {
    let shapes = shapes();
    let run = |tx: Box<dyn descent_core::Transform>, idx: &[usize]| {
        let sh: Vec<Vec<usize>> = idx.iter().map(|&i| shapes[i].clone()).collect();
        let mut params: Vec<Vec<f32>> = idx.iter().map(|&i| init()[i].clone()).collect();
        let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
        let mut opt = Optimizer::new(tx, sh, &views).unwrap();
        for t in 0..5 {
            let g: Vec<Vec<f32>> = idx.iter().map(|&i| grads(t)[i].clone()).collect();
            opt.step_vecs(&mut params, &g).unwrap();
        }
        params
    };
    for name in ["adamp", "came", "lion"] {
        // CAME's `clip_threshold` is the optimizer's: the group's value is not read.
        let mut second_h = json!({"lr": 0.002});
        if name == "came" {
            second_h["clip_threshold"] = json!(0.1);
        }
        let groups = json!([{"params": [0, 3]}, {"params": [1, 2, 4], "hparams": second_h}]);
        let h = json!({"lr": 0.01});
        let all = run(build_optimizer("po", name, &h, Some(&groups), &shapes).unwrap(), &[0, 1, 2, 3, 4]);
        let first = run(build_optimizer("po", name, &h, None, &shapes).unwrap(), &[0, 3]);
        let second = run(build_optimizer("po", name, &json!({"lr": 0.002}), None, &shapes).unwrap(), &[1, 2, 4]);
        assert_eq!(all[0], first[0], "{name}");
        assert_eq!(all[3], first[1], "{name}");
        assert_eq!(all[1], second[0], "{name}");
        assert_eq!(all[2], second[1], "{name}");
    }
}
