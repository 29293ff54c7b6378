//! Per-parameter masks and labels (optax `mask`, `weight_decay_mask`, `masked`, `freeze`,
//! `selective_transform`, `partition`) are honoured, or refused naming the argument.

use descent_core::spec::build_optimizer;
use descent_core::Optimizer;
use serde_json::{json, Value};

fn shapes() -> Vec<Vec<usize>> {
    vec![vec![2, 3], vec![4], vec![3]]
}

fn init() -> Vec<Vec<f32>> {
    shapes()
        .iter()
        .enumerate()
        .map(|(k, s)| (0..s.iter().product()).map(|j| 0.5 + 0.1 * (j + k) as f32).collect())
        .collect()
}

/// The parameters after `steps` steps of `name` with these arguments and these gradients.
fn run(name: &str, hparams: &Value, grads: &[Vec<f32>], steps: usize) -> Vec<Vec<f32>> {
    let tx = build_optimizer("optax", name, hparams, None, &shapes()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut params = init();
    let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    let mut opt = Optimizer::new(tx, shapes(), &views).unwrap();
    for _ in 0..steps {
        opt.step_vecs(&mut params, grads).unwrap();
    }
    params
}

fn zero_grads() -> Vec<Vec<f32>> {
    init().iter().map(|p| vec![0.0; p.len()]).collect()
}

/// The aliases with a decay mask, each with its mask argument: given zero gradients only the
/// decay moves a parameter, so the parameter the mask excludes keeps its value exactly, and the
/// same optimizer without the mask moves it (the check would fail if the mask were dropped).
#[test]
fn a_decay_mask_keeps_the_excluded_parameters_from_decaying() {
    let cases = [
        ("adamw", json!({"learning_rate": 0.01, "weight_decay": 0.1}), "mask"),
        ("nadamw", json!({"learning_rate": 0.01, "weight_decay": 0.1}), "mask"),
        ("adamaxw", json!({"learning_rate": 0.01, "weight_decay": 0.1}), "mask"),
        ("lion", json!({"learning_rate": 0.01, "weight_decay": 0.1}), "mask"),
        ("lamb", json!({"learning_rate": 0.01, "weight_decay": 0.1}), "mask"),
        ("adan", json!({"learning_rate": 0.01, "weight_decay": 0.1}), "mask"),
        ("adabelief", json!({"learning_rate": 0.01, "weight_decay": 0.1}), "weight_decay_mask"),
        ("adadelta", json!({"learning_rate": 0.01, "weight_decay": 0.1}), "weight_decay_mask"),
        ("lars", json!({"learning_rate": 0.01, "weight_decay": 0.1}), "weight_decay_mask"),
        ("contrib.ademamix", json!({"learning_rate": 0.01, "weight_decay": 0.1}), "mask"),
        ("add_decayed_weights", json!({"weight_decay": 0.1}), "mask"),
    ];
    let mask = [true, false, true];
    for (name, base, key) in cases {
        let mut masked = base.clone();
        masked[key] = json!(mask);
        let with = run(name, &masked, &zero_grads(), 3);
        let without = run(name, &base, &zero_grads(), 3);
        for (k, (&on, p0)) in mask.iter().zip(init()).enumerate() {
            assert_ne!(without[k], p0, "{name}: without a mask parameter {k} decays");
            if on {
                assert_eq!(with[k], without[k], "{name} {key}={mask:?}: parameter {k} decays as without a mask");
            } else {
                assert_eq!(with[k], p0, "{name} {key}={mask:?}: excluded parameter {k} moved");
            }
        }
    }
}

/// With gradients, adamw's mask changes only the decay: the excluded parameter moves as Adam
/// alone moves it.
#[test]
fn adamw_with_a_mask_is_adam_where_the_mask_is_false() {
    let grads: Vec<Vec<f32>> = init().iter().map(|p| p.iter().map(|x| (7.0 * x).sin()).collect()).collect();
    let h = json!({"learning_rate": 0.01, "weight_decay": 0.5, "mask": [false, true, false]});
    let masked = run("adamw", &h, &grads, 4);
    let adam = run("adam", &json!({"learning_rate": 0.01}), &grads, 4);
    let adamw = run("adamw", &json!({"learning_rate": 0.01, "weight_decay": 0.5}), &grads, 4);
    assert_eq!(masked[0], adam[0]);
    assert_eq!(masked[2], adam[2]);
    assert_eq!(masked[1], adamw[1]);
    assert_ne!(adam[1], adamw[1]);
}

/// `masked` keeps the inner state for the masked parameters only; the others pass through.
#[test]
fn masked_passes_the_other_updates_through() {
    let grads: Vec<Vec<f32>> = init().iter().map(|p| p.iter().map(|x| x - 0.3).collect()).collect();
    let h = json!({"links": [["masked", {"inner": ["scale_by_adam", {}], "mask": [true, false, true]}], ["scale", {"step_size": -0.1}]]});
    let out = run("chain", &h, &grads, 2);
    let p0 = init();
    for (j, x) in out[1].iter().enumerate() {
        let mut want = p0[1][j];
        for _ in 0..2 {
            want += grads[1][j] * -0.1f32;
        }
        assert_eq!(*x, want, "the unmasked parameter takes the raw gradient");
    }
    let adam = run("chain", &json!({"links": [["scale_by_adam", {}], ["scale", {"step_size": -0.1}]]}), &grads, 2);
    assert_eq!(out[0], adam[0]);
    assert_eq!(out[2], adam[2]);
}

/// `selective_transform` does not move frozen parameters at all; `freeze` in a chain zeroes their
/// updates there, and a decay later in the chain still acts on them.
#[test]
fn frozen_parameters_stay_or_only_decay() {
    let grads: Vec<Vec<f32>> = init().iter().map(|p| p.iter().map(|x| x * 0.7 - 0.2).collect()).collect();
    let adamw = json!(["adamw", {"learning_rate": 0.01, "weight_decay": 0.1}]);
    let sel = run("selective_transform", &json!({"optimizer": adamw, "freeze_mask": [false, true, false]}), &grads, 3);
    assert_eq!(sel[1], init()[1]);
    assert_ne!(sel[0], init()[0]);
    let frz = run("chain", &json!({"links": [["freeze", {"mask": [false, true, false]}], adamw]}), &grads, 3);
    let decay_only = run("adamw", &json!({"learning_rate": 0.01, "weight_decay": 0.1}), &zero_grads(), 3);
    assert_eq!(frz[1], decay_only[1]);
}

/// `partition`: each label's optimizer on its own parameters, as if run on them alone.
#[test]
fn partition_runs_each_label_on_its_parameters() {
    let grads: Vec<Vec<f32>> = init().iter().map(|p| p.iter().map(|x| (3.0 * x).cos()).collect()).collect();
    let h = json!({"transforms": {"m": ["adam", {"learning_rate": 0.01}], "v": ["sgd", {"learning_rate": 0.05, "momentum": 0.9}]},
                   "param_labels": ["m", "v", "m"]});
    let both = run("partition", &h, &grads, 3);
    let adam = run("adam", &json!({"learning_rate": 0.01}), &grads, 3);
    let sgd = run("sgd", &json!({"learning_rate": 0.05, "momentum": 0.9}), &grads, 3);
    assert_eq!(both[0], adam[0]);
    assert_eq!(both[1], sgd[1]);
    assert_eq!(both[2], adam[2]);
    assert_eq!(run("multi_transform", &h, &grads, 3), both);
}

/// Masks and labels that cannot be honoured are errors naming the argument.
#[test]
fn masks_that_cannot_be_honoured_are_refused_by_name() {
    let err = |name: &str, h: Value| match build_optimizer("optax", name, &h, None, &shapes()) {
        Ok(_) => panic!("{name} {h}: accepted"),
        Err(e) => e.to_string(),
    };
    let e = err("adamw", json!({"learning_rate": 0.01, "mask": "lambda p: p.ndim > 1"}));
    assert!(e.contains("`mask`") && e.contains("callable"), "{e}");
    let e = err("adamw", json!({"learning_rate": 0.01, "mask": [true, false]}));
    assert!(e.contains("`mask`") && e.contains("2 entries for 3 parameters"), "{e}");
    let e = err("adabelief", json!({"learning_rate": 0.01, "weight_decay_mask": [1, 0, 1]}));
    assert!(e.contains("`weight_decay_mask`"), "{e}");
    let e = err("freeze", json!({}));
    assert!(e.contains("`mask`"), "{e}");
    let e =
        err("selective_transform", json!({"optimizer": ["adam", {"learning_rate": 0.1}], "freeze_mask": {"a": true}}));
    assert!(e.contains("`freeze_mask`"), "{e}");
    let e = err(
        "partition",
        json!({"transforms": {"a": ["sgd", {"learning_rate": 0.1}]}, "param_labels": ["a", "b", "a"]}),
    );
    assert!(e.contains("`b`"), "{e}");
    let e =
        err("partition", json!({"transforms": {"a": ["sgd", {"learning_rate": 0.1}]}, "param_labels": "labels_fn"}))
            .to_string();
    assert!(e.contains("`labels_fn`"), "{e}");
    let e = err("contrib.prodigy", json!({"weight_decay": 0.1, "weight_decay_mask": [true, false, true]}));
    assert!(e.contains("`weight_decay_mask`"), "{e}");
    // Muon honours a mask of one boolean per parameter (tests/cases/optax/…wd_mask); a callable's
    // source is refused.
    let e = err("contrib.muon", json!({"learning_rate": 0.1, "weight_decay_mask": "lambda p: p.ndim == 2"}));
    assert!(e.contains("`weight_decay_mask`") && e.contains("callable"), "{e}");
}
