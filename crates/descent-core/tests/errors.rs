//! Bad input gets a clear error, never a panic.

use descent_core::replay::parse_case;
use descent_core::spec::{build_optimizer, build_schedule};
use descent_core::torch::{Adam, AdamConfig, WeightDecay};
use descent_core::transforms::{ScaleByAdam, ScaleByAdamConfig};
use descent_core::{chain, NonFinite, Optimizer};
use serde_json::json;

fn shapes() -> Vec<Vec<usize>> {
    vec![vec![2, 2], vec![3]]
}

fn err_of(lib: &str, name: &str, h: serde_json::Value) -> String {
    match build_optimizer(lib, name, &h, None, &shapes()) {
        Ok(_) => panic!("{lib}.{name} {h} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_optimizer_names_it_and_lists_the_valid_ones() {
    let e = err_of("torch", "adamz", json!({}));
    assert!(e.contains("adamz") && e.contains("adamw") && e.contains("sgd"), "{e}");
    let e = err_of("optax", "lionn", json!({}));
    assert!(e.contains("lionn") && e.contains("lion"), "{e}");
    let e = err_of("keras", "adam", json!({}));
    assert!(e.contains("keras") && e.contains("torch") && e.contains("optax"), "{e}");
}

#[test]
fn unknown_keyword_argument_names_it_and_lists_the_accepted_ones() {
    let e = err_of("torch", "adam", json!({"lr": 0.1, "beta1": 0.9}));
    assert!(e.contains("beta1") && e.contains("betas") && e.contains("amsgrad"), "{e}");
    let e = err_of("optax", "adamw", json!({"learning_rate": 0.1, "betas": [0.9, 0.99]}));
    assert!(e.contains("betas") && e.contains("b1"), "{e}");
}

#[test]
fn ill_typed_or_missing_arguments_name_the_field() {
    let e = err_of("torch", "sgd", json!({"lr": "fast"}));
    assert!(e.contains("`lr`") && e.contains("fast"), "{e}");
    let e = err_of("optax", "adam", json!({}));
    assert!(e.contains("learning_rate") && e.contains("missing"), "{e}");
    let e = err_of("torch", "adam", json!({"betas": [0.9]}));
    assert!(e.contains("betas"), "{e}");
    // A dtype descent does not store is an error, never silently f32.
    let e = err_of("optax", "adam", json!({"learning_rate": 0.1, "mu_dtype": "float16"}));
    assert!(e.contains("mu_dtype") && e.contains("float16") && e.contains("bfloat16"), "{e}");
    let e = err_of("optax", "contrib.adopt", json!({"learning_rate": 0.1, "mu_dtype": "bfloat16"}));
    assert!(e.contains("mu_dtype") && e.contains("adamw"), "{e}");
}

#[test]
fn invalid_hyper_parameters_are_refused_at_construction() {
    for (name, h, needle) in [
        ("adam", json!({"lr": -1.0}), "learning rate"),
        ("adam", json!({"betas": [1.0, 0.999]}), "beta parameter at index 0"),
        ("adamw", json!({"betas": [0.9, -0.1]}), "beta parameter at index 1"),
        ("sgd", json!({"lr": 0.1, "momentum": -0.5}), "momentum"),
        ("sgd", json!({"lr": 0.1, "nesterov": true}), "Nesterov"),
        ("rmsprop", json!({"eps": -1e-8}), "epsilon"),
        ("adagrad", json!({"weight_decay": -0.1}), "weight_decay"),
    ] {
        let e = err_of("torch", name, h);
        assert!(e.contains(needle), "{name}: {e}");
    }
    // Typed configs get the finiteness the keyword arguments' numbers have.
    assert!(Adam::new(AdamConfig { lr: f64::INFINITY.into(), ..Default::default() }).is_err());
    assert!(Adam::new(AdamConfig { eps: f64::INFINITY, ..Default::default() }).is_err());
    let sgd = |momentum: f64, dampening: f64| {
        descent_core::torch::Sgd::new(descent_core::torch::SgdConfig { momentum, dampening, ..Default::default() })
    };
    assert!(sgd(f64::INFINITY, 0.0).is_err() && sgd(0.9, f64::NAN).is_err() && sgd(0.9, 0.1).is_ok());
    let betas = (0.9, 1.5);
    assert!(Adam::new(AdamConfig { lr: 0.1.into(), betas, ..Default::default() }).is_err());
    assert!(Adam::new(AdamConfig { weight_decay: 0.1, decay: WeightDecay::Decoupled, ..AdamConfig::adamw() }).is_ok());
}

/// torch checks `SGD`'s Nesterov conditions on the constructor's arguments only: a group that
/// drops the momentum (or adds dampening) runs, a constructor without momentum is refused even
/// when every group gives one; pytorch_optimizer's constructors check theirs likewise.
#[test]
fn constructors_are_checked_as_the_libraries_check_them_not_the_groups() {
    let shapes = shapes();
    let groups = |h0: serde_json::Value, h1: serde_json::Value| json!([{"params": [0], "hparams": h0}, {"params": [1], "hparams": h1}]);
    let nesterov = json!({"lr": 0.1, "momentum": 0.9, "nesterov": true});
    for g in [groups(json!({"momentum": 0.0}), json!({})), groups(json!({"dampening": 0.5}), json!({}))] {
        assert!(build_optimizer("torch", "sgd", &nesterov, Some(&g), &shapes).is_ok(), "{g}");
    }
    // pytorch_optimizer too checks its constructor's arguments whatever the groups give.
    let every = groups(json!({"lr": 0.1}), json!({"lr": 0.1}));
    for (name, h) in
        [("lamb", json!({"lr": -1.0})), ("lion", json!({"betas": [1.5, 0.9]})), ("soap", json!({"lr": -1.0}))]
    {
        let e = build_optimizer("po", name, &h, Some(&every), &shapes).err().map(|e| e.to_string());
        assert!(e.is_some(), "po.{name} {h} with groups was accepted");
    }
    let no_momentum = json!({"lr": 0.1, "nesterov": true});
    let g = groups(json!({"momentum": 0.9}), json!({"momentum": 0.5}));
    let e = build_optimizer("torch", "sgd", &no_momentum, Some(&g), &shapes).err().unwrap().to_string();
    assert!(e.contains("Nesterov"), "{e}");
}

/// Values the libraries raise on, at construction or at a step that always comes with them, are
/// refused rather than run into NaN: torch ASGD's negative `lambd`/`alpha`, optax RAdam's `b2 = 1`
/// (a division by zero), a rectification threshold that the SMA length reaches where the square
/// root is of a negative number, Schedule-Free RAdam's negative `weight_lr_power` with its silent
/// warm-up (a negative power of a zero rate); the same values where the library runs are not.
#[test]
fn values_the_libraries_raise_on_are_refused() {
    for (lib, name, h, needle) in [
        ("torch", "asgd", json!({"lambd": -0.1}), "lambd"),
        ("torch", "asgd", json!({"alpha": -0.5}), "alpha"),
        ("optax", "radam", json!({"learning_rate": 0.1, "b2": 1.0}), "b2"),
        ("po", "ranger", json!({"n_sma_threshold": 2}), "n_sma_threshold"),
        ("po", "adabelief", json!({"rectify": true, "n_sma_threshold": 3}), "n_sma_threshold"),
        ("po", "schedulefreeradam", json!({"weight_lr_power": -0.1}), "weight_lr_power"),
        // ρ∞ = 4 exactly: a division by zero once ρₜ rounds to 4.
        ("po", "ranger", json!({"n_sma_threshold": 4, "betas": [0.9, 0.6]}), "n_sma_threshold"),
    ] {
        let e = err_of(lib, name, h.clone());
        assert!(e.contains(needle), "{lib}.{name} {h}: {e}");
    }
    let ok = |name: &str, h: serde_json::Value, groups: Option<serde_json::Value>| {
        let r = build_optimizer("po", name, &h, groups.as_ref(), &shapes());
        assert!(r.is_ok(), "po.{name} {h} {groups:?}: {:?}", r.err().map(|e| e.to_string()));
    };
    // Without the rectification the threshold is not read; with β₂ = 0.5 (ρ∞ = 3) or a threshold
    // that ρₜ steps over (3.9975 → 4.996 at β₂ = 0.999), r² stays positive.
    ok("adabelief", json!({"n_sma_threshold": 3}), None);
    ok("adabelief", json!({"rectify": true, "n_sma_threshold": 3, "betas": [0.9, 0.5]}), None);
    ok("ranger", json!({"n_sma_threshold": 3.999}), None);
    ok("schedulefreeradam", json!({"weight_lr_power": -0.1, "silent_sgd_phase": false}), None);
    // Judged on what each group steps with: groups that turn the rectification off.
    let groups = json!([{"params": [0, 1], "hparams": {"rectify": false}}]);
    ok("adabelief", json!({"rectify": true, "n_sma_threshold": 3}), Some(groups));
    let e = build_optimizer(
        "po",
        "adabelief",
        &json!({"n_sma_threshold": 3}),
        Some(&json!([{"params": [0], "hparams": {"rectify": true}}])),
        &shapes(),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("param group 0"), "{e}");
}

#[test]
fn wrong_gradient_count_or_size_is_an_error() {
    let tx = chain(vec![Box::new(ScaleByAdam::new(ScaleByAdamConfig::default()))]);
    let mut params = vec![vec![1.0f32; 4], vec![0.0f32; 3]];
    let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    let mut opt = Optimizer::new(tx, shapes(), &views).unwrap();
    let e = opt.step_vecs(&mut params, &[vec![0.0; 4]]).unwrap_err().to_string();
    assert!(e.contains("expected 2 gradient tensors, got 1"), "{e}");
    let e = opt.step_vecs(&mut params, &[vec![0.0; 4], vec![0.0; 5]]).unwrap_err().to_string();
    assert!(e.contains("gradient 1 has 5 elements, expected 3"), "{e}");
    assert_eq!(params, vec![vec![1.0f32; 4], vec![0.0f32; 3]], "a refused step must not touch the parameters");
}

#[test]
fn muon_refuses_non_matrix_parameters() {
    let tx = build_optimizer("torch", "muon", &json!({"lr": 0.02}), None, &shapes()).unwrap();
    let params = [vec![1.0f32; 4], vec![0.0f32; 3]];
    let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    let e = Optimizer::new(tx, shapes(), &views).err().unwrap().to_string();
    assert!(e.contains("2D") && e.contains("[3]"), "{e}");
}

#[test]
fn malformed_case_files_get_one_line_errors_naming_file_and_field() {
    let e = parse_case("bad.json", "{not json").unwrap_err().to_string();
    assert!(e.starts_with("bad.json: malformed JSON"), "{e}");
    let e = parse_case(
        "bad.json",
        r#"{"id": "torch.sgd.x", "optimizer": "sgd", "hparams": {}, "params": [{"shape": [2], "init": [1, 2, 3]}]}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("bad.json") && e.contains("params[0].init"), "{e}");
    let e = parse_case("bad.json", r#"{"optimizer": "sgd"}"#).unwrap_err().to_string();
    assert!(e.contains("field `id`: missing"), "{e}");
    let e = parse_case(
        "bad.json",
        r#"{"id": "torch.sgd.x", "optimizer": "sgd", "hparams": {}, "params": [{"shape": [2], "init": [1, 2]}],
            "grads": [[[1, 2]]], "expected": [[[1, "x"]]], "tolerance": {"rel": 0.001, "abs": 0}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("expected[0][0]"), "{e}");
    assert!(!e.contains('\n'), "error spans lines: {e}");
    // Replays run in float32: another dtype is refused, not replayed as float32.
    let case = |dtype: &str| {
        format!(
            r#"{{"id": "torch.sgd.x", "optimizer": "sgd", "hparams": {{"lr": 0.1}}, "dtype": {dtype},
                "params": [{{"shape": [2], "init": [1, 2]}}], "grads": [[[1, 2]]], "expected": [[[0.9, 1.8]]],
                "tolerance": {{"rel": 0.001, "abs": 0}}}}"#
        )
    };
    assert!(parse_case("ok.json", &case("\"float32\"")).is_ok());
    // A number past float32's range is refused, naming its field, not replayed as ±inf.
    for (text, field) in [(r#""init": [1e39, 2]"#, "params[0].init"), (r#""init": [-1e39, 2]"#, "params[0].init")] {
        let bad = case("\"float32\"").replace(r#""init": [1, 2]"#, text);
        let e = parse_case("bad.json", &bad).unwrap_err().to_string();
        assert!(e.contains(field) && e.contains("float32's range"), "{e}");
    }
    let bad = case("\"float32\"").replace("[[[1, 2]]]", "[[[1e39, 2]]]");
    let e = parse_case("bad.json", &bad).unwrap_err().to_string();
    assert!(e.contains("grads[0]") && e.contains("float32's range"), "{e}");
    for bad in ["\"float64\"", "\"bfloat16\"", "5"] {
        let e = parse_case("bad.json", &case(bad)).unwrap_err().to_string();
        assert!(e.contains("field `dtype`") && e.contains("float32"), "{bad}: {e}");
    }
    // A file with a schedule's fields and an optimizer's is refused, not replayed as one of them.
    let both = case("\"float32\"").replacen('{', r#"{"schedule": "StepLR", "expected_lr": [0.1, 0.1], "#, 1);
    let e = parse_case("both.json", &both).unwrap_err().to_string();
    assert!(e.contains("both.json") && e.contains("one kind"), "{e}");
}

#[test]
fn unknown_schedule_names_it() {
    let e = build_schedule("torch", "WarmupLR", &json!({}), Some(0.1)).err().unwrap().to_string();
    assert!(e.contains("WarmupLR") && e.contains("OneCycleLR"), "{e}");
    let e = build_schedule("optax", "cosine_warmup", &json!({}), None).err().unwrap().to_string();
    assert!(e.contains("cosine_warmup") && e.contains("warmup_cosine_decay_schedule"), "{e}");
    let e =
        build_schedule("torch", "StepLR", &json!({"step_size": 10, "gama": 0.5}), Some(0.1)).err().unwrap().to_string();
    assert!(e.contains("gama") && e.contains("gamma"), "{e}");
    // One step given twice ("30" and "030" are step 30 both): Python's dict cannot hold that.
    let h = json!({"init_value": 0.1, "boundaries_and_scales": {"30": 0.1, "030": 0.5}});
    let e = build_schedule("optax", "piecewise_constant_schedule", &h, None).err().unwrap().to_string();
    assert!(e.contains("boundaries_and_scales") && e.contains("step 30 given more than once"), "{e}");
}

#[test]
fn non_finite_gradients_follow_the_library_or_skip_and_count() {
    let build = || {
        let params = [vec![1.0f32; 4], vec![0.0f32; 3]];
        let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
        Optimizer::new(
            build_optimizer("torch", "adam", &json!({"lr": 0.1}), None, &shapes()).unwrap(),
            shapes(),
            &views,
        )
        .unwrap()
    };
    let grads = vec![vec![0.1, f32::NAN, 0.1, 0.1], vec![0.0; 3]];
    // Default: as torch, the NaN propagates into the parameter.
    let mut p = vec![vec![1.0f32; 4], vec![0.0f32; 3]];
    let mut opt = build();
    assert!(opt.step_vecs(&mut p, &grads).unwrap());
    assert!(p[0][1].is_nan() && p[0][0].is_finite());
    // Skip: nothing moves, the step is counted as skipped.
    let mut p = vec![vec![1.0f32; 4], vec![0.0f32; 3]];
    let mut opt = build().with_non_finite(NonFinite::Skip);
    let before = opt.state_dict().unwrap();
    assert!(!opt.step_vecs(&mut p, &grads).unwrap());
    assert_eq!(p, vec![vec![1.0f32; 4], vec![0.0f32; 3]]);
    assert_eq!(opt.skipped(), 1);
    assert_eq!(opt.steps(), 0);
    let mut after = opt.state_dict().unwrap();
    after.counters.insert("optimizer.skipped".into(), 0);
    assert_eq!(after, before);
}

/// optax rprop: the first step does not move, later steps apply the previous step's
/// `lr·sign(g)`, step sizes grow by eta_plus while signs agree (optax 0.2.8's update rule).
#[test]
fn optax_rprop_follows_optax_update_rule() {
    let shapes = vec![vec![2]];
    let tx = build_optimizer("optax", "rprop", &json!({"learning_rate": 0.1}), None, &shapes).unwrap();
    let mut p = vec![vec![0.0f32, 0.0]];
    let views: Vec<&[f32]> = p.iter().map(|v| v.as_slice()).collect();
    let mut opt = Optimizer::new(tx, shapes, &views).unwrap();
    opt.step_vecs(&mut p, &[vec![1.0, -2.0]]).unwrap();
    assert_eq!(p[0], vec![0.0, 0.0]);
    opt.step_vecs(&mut p, &[vec![3.0, -1.0]]).unwrap();
    // Signs agree: step sizes 0.1 -> 0.12; the emitted update is the previous one, -0.1·sign(g1).
    assert_eq!(p[0], vec![-0.1, 0.1]);
    opt.step_vecs(&mut p, &[vec![-1.0, -1.0]]).unwrap();
    // First element flips: skipped; second agrees: applies 0.12.
    assert!((p[0][0] + 0.1).abs() < 1e-7 && (p[0][1] - 0.22).abs() < 1e-6, "{:?}", p[0]);
}

#[test]
fn registry_names_are_listed_once_each() {
    let names = descent_core::spec::registry_names();
    let mut seen = std::collections::HashSet::new();
    for n in &names {
        assert!(seen.insert(n), "{n} is listed twice");
    }
}

#[test]
fn library_default_learning_rates_are_the_libraries() {
    use descent_core::spec::library_default_lr;
    // torch gives every optimizer a default; optax requires it except where the method sets its
    // own scale (Prodigy, D-Adaptation and DoG start from 1.0).
    assert_eq!(library_default_lr("torch", "adam"), Some(1e-3));
    assert_eq!(library_default_lr("torch", "adadelta"), Some(1.0));
    assert_eq!(library_default_lr("torch", "adagrad"), Some(1e-2));
    assert_eq!(library_default_lr("torch", "sgd"), Some(1e-3));
    assert_eq!(library_default_lr("optax", "contrib.prodigy"), Some(1.0));
    assert_eq!(library_default_lr("optax", "contrib.dadapt_adamw"), Some(1.0));
    assert_eq!(library_default_lr("optax", "adam"), None);
    assert_eq!(library_default_lr("optax", "chain"), None);
}

/// A folder of cases reached twice (a symbolic link to an enclosing folder, the same folder given
/// twice) is read once: each case counted once, and the walk ends.
#[cfg(unix)]
#[test]
fn case_folders_with_a_link_loop_are_read_once() {
    let dir = std::env::temp_dir().join(format!("descent-caseloop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::os::unix::fs::symlink("..", dir.join("sub").join("back")).unwrap();
    std::os::unix::fs::symlink(".", dir.join("self")).unwrap();
    std::fs::write(dir.join("a.json"), "{}").unwrap();
    let files = descent_core::replay::collect_case_files(&[dir.clone(), dir.join("self")]).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// optax `contrib.muon`'s options: what optax refuses is refused with the argument's name, at
/// construction or at `init`, never a panic.
#[test]
fn muon_options_out_of_their_domain_name_the_argument() {
    let shapes = vec![vec![4, 3], vec![3], vec![2, 3, 2]];
    let params: Vec<Vec<f32>> = shapes.iter().map(|s| vec![0.5; s.iter().product()]).collect();
    let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    let error = |h: serde_json::Value| -> String {
        match build_optimizer("optax", "contrib.muon", &h, None, &shapes) {
            Err(e) => e.to_string(),
            Ok(tx) => match Optimizer::new(tx, shapes.clone(), &views) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{h} was accepted"),
            },
        }
    };
    let lr = |extra: serde_json::Value| {
        let mut h = json!({"learning_rate": 0.02});
        h.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        h
    };
    let e = error(lr(json!({"preconditioning": "newton"})));
    assert!(e.contains("preconditioning") && e.contains("newton") && e.contains("schatten"), "{e}");
    let e = error(lr(json!({"ns_coeffs": "polar"})));
    assert!(e.contains("ns_coeffs") && e.contains("polar") && e.contains("dion"), "{e}");
    let e = error(lr(json!({"ns_coeffs": [[3.0, -3.0, 1.0], [3.0, -3.0]]})));
    assert!(e.contains("ns_coeffs"), "{e}");
    // optax: "Not enough coeffs to perform 3 steps" for five rows and ns_steps = 3.
    let e = error(lr(json!({"ns_coeffs": "dion", "ns_steps": 3})));
    assert!(e.contains("ns_coeffs") && e.contains("ns_steps = 3"), "{e}");
    let e = error(lr(json!({"weight_decay_mask": [true, false]})));
    assert!(e.contains("weight_decay_mask") && e.contains("2 entries for 3 parameters"), "{e}");
    let e = error(lr(json!({"muon_weight_dimension_numbers": [null, null]})));
    assert!(e.contains("muon_weight_dimension_numbers") && e.contains("2 entries for 3 parameters"), "{e}");
    let e = error(lr(json!({"muon_weight_dimension_numbers": [null, null, {"reduction_axis": 0, "output_axis": -3}]})));
    assert!(e.contains("distinct"), "{e}");
    let e = error(lr(json!({"muon_weight_dimension_numbers": [null, null, {"reduction_axis": 3}]})));
    assert!(e.contains("axis 3 out of range"), "{e}");
    let e = error(lr(json!({"muon_weight_dimension_numbers": [null, {}, null]})));
    assert!(e.contains("rank 2 or more") && e.contains("[3]"), "{e}");
    let e = error(lr(json!({"muon_weight_dimension_numbers": [null, null, {"reduction": 0}]})));
    assert!(e.contains("unknown field `reduction`"), "{e}");
    // Without dimension numbers a 3-D parameter goes to Adam, as in optax.
    let tx =
        build_optimizer("optax", "contrib.muon", &lr(json!({"adaptive": true, "consistent_rms": 0.2})), None, &shapes);
    assert!(Optimizer::new(tx.unwrap(), shapes.clone(), &views).is_ok());
}

/// pytorch_optimizer's AdaFactor takes `lr=None` with its relative step (the default); without
/// it there is no rate, which the library fails on: refused.
#[test]
fn adafactor_without_a_rate_needs_the_relative_step() {
    let e = err_of("po", "adafactor", json!({"lr": null, "relative_step": false}));
    assert!(e.contains("`lr`") && e.contains("relative_step"), "{e}");
    assert!(build_optimizer("po", "adafactor", &json!({"lr": null}), None, &shapes()).is_ok());
}
