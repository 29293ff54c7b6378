//! The learning rate as a live hyper-parameter: set between steps, with each optimizer's own
//! semantics (torch's `param_group["lr"]`, optax's `inject_hyperparams`).

use descent_core::spec::build_optimizer;
use descent_core::torch::{Asgd, AsgdConfig};
use descent_core::Optimizer;
use serde_json::json;

fn grads(t: usize) -> Vec<Vec<f32>> {
    vec![(0..5).map(|j| ((t * 7 + j * 3) % 11) as f32 / 5.0 - 1.0).collect()]
}

/// torch.optim.ASGD (single-tensor path) stepped under a scheduler that sets `lr` before each
/// step, computed from torch's update rule in f64.
fn torch_asgd(p0: &[f32], lrs: &[f64], lambd: f64, alpha: f64, t0: f64, wd: f64) -> Vec<Vec<f64>> {
    let mut p: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
    let (mut eta, mut mu) = (lrs[0], 1.0f64);
    let mut ax = vec![0.0f64; p.len()];
    let mut out = vec![];
    for (t, &lr) in lrs.iter().enumerate() {
        let step = (t + 1) as f64;
        let g = grads(t);
        for j in 0..p.len() {
            let gj = g[0][j] as f64 + wd * p[j];
            p[j] *= 1.0 - lambd * eta;
            p[j] -= eta * gj;
            ax[j] = if mu != 1.0 { ax[j] + (p[j] - ax[j]) * mu } else { p[j] };
        }
        eta = lr / (1.0 + lambd * lr * step).powf(alpha);
        mu = 1.0 / (step - t0).max(1.0);
        out.push(p.clone());
    }
    out
}

#[test]
fn asgd_under_a_schedule_follows_torch() {
    let p0 = vec![0.5f32, -0.25, 1.0, 0.0, -1.5];
    let lrs: Vec<f64> = (0..30).map(|t| 0.2 * 0.9f64.powi(t)).collect();
    let (lambd, alpha, t0, wd) = (0.05, 0.75, 10.0, 0.01);
    let want = torch_asgd(&p0, &lrs, lambd, alpha, t0, wd);
    let asgd = Asgd::new(AsgdConfig { lr: 1.0.into(), lambd, alpha, t0, weight_decay: wd, maximize: false }).unwrap();
    let mut opt = Optimizer::new(Box::new(asgd), vec![vec![5]], &[&p0]).unwrap();
    let mut p = vec![p0.clone()];
    for (t, &lr) in lrs.iter().enumerate() {
        opt.set_learning_rate(lr).unwrap();
        opt.step_vecs(&mut p, &grads(t)).unwrap();
        for (a, b) in p[0].iter().zip(&want[t]) {
            assert!((*a as f64 - b).abs() <= 1e-5 * b.abs().max(1.0), "step {t}: {a} vs {b}");
        }
    }
    // The multiplier of the old design (scaling the update by lr_t/lr_0) is not the same rule:
    // eta and the shrink term follow the rate, so a schedule must set the rate itself.
    assert_eq!(opt.learning_rate(), Some(lrs[29]));
}

#[test]
fn a_new_rate_scales_that_step_only_and_moments_are_kept() {
    let shapes = vec![vec![5]];
    let p0 = vec![0.1f32, 0.2, -0.3, 0.4, -0.5];
    let build = || {
        let tx = build_optimizer("torch", "adamw", &json!({"lr": 1e-2}), None, &shapes).unwrap();
        Optimizer::new(tx, shapes.clone(), &[&p0]).unwrap()
    };
    let (mut a, mut b) = (build(), build());
    let (mut pa, mut pb) = (vec![p0.clone()], vec![p0.clone()]);
    for t in 0..3 {
        a.step_vecs(&mut pa, &grads(t)).unwrap();
        b.step_vecs(&mut pb, &grads(t)).unwrap();
    }
    assert_eq!(pa, pb);
    let before = pa[0].clone();
    a.set_learning_rate(5e-3).unwrap();
    a.step_vecs(&mut pa, &grads(3)).unwrap();
    b.step_vecs(&mut pb, &grads(3)).unwrap();
    // AdamW's step (decay included) is linear in the rate: half the rate, half the displacement.
    for j in 0..5 {
        let (da, db) = (pa[0][j] - before[j], pb[0][j] - before[j]);
        // (Within the f32 rounding of p + d − p; a rescaled moment would be off by far more.)
        assert!((da - 0.5 * db).abs() <= 1e-4 * db.abs(), "{j}: {da} vs {db}");
    }
    assert_eq!(a.learning_rate(), Some(5e-3));
}

#[test]
fn chains_groups_and_optimizers_without_a_rate() {
    let shapes = vec![vec![2], vec![3]];
    let p0: Vec<Vec<f32>> = vec![vec![0.0; 2], vec![0.0; 3]];
    let views: Vec<&[f32]> = p0.iter().map(|p| p.as_slice()).collect();
    let spec = json!({"links": [["scale_by_adam", {}], ["scale_by_learning_rate", {"learning_rate": 0.1}]]});
    let mut chain =
        Optimizer::new(build_optimizer("optax", "chain", &spec, None, &shapes).unwrap(), shapes.clone(), &views)
            .unwrap();
    assert_eq!(chain.learning_rate(), Some(0.1));
    chain.set_learning_rate(0.3).unwrap();
    assert_eq!(chain.learning_rates(), vec![Some(0.3)]);
    // torch param groups: one rate per group, set each (a scheduler scales each base rate).
    let bad = json!([{"params": [0], "lr": 0.1}]);
    assert!(
        build_optimizer("torch", "sgd", &json!({}), Some(&bad), &shapes).is_err(),
        "a group's stray key is refused"
    );
    let groups = json!([{"params": [0], "hparams": {"lr": 0.1}}, {"params": [1], "hparams": {"lr": 0.01}}]);
    let tx = build_optimizer("torch", "sgd", &json!({"lr": 0.1}), Some(&groups), &shapes).unwrap();
    let mut sgd = Optimizer::new(tx, shapes.clone(), &views).unwrap();
    assert_eq!(sgd.learning_rates(), vec![Some(0.1), Some(0.01)]);
    assert_eq!(sgd.learning_rate(), None);
    sgd.set_learning_rates(&[0.05, 0.005]).unwrap();
    assert_eq!(sgd.learning_rates(), vec![Some(0.05), Some(0.005)]);
    assert!(sgd.set_learning_rates(&[0.05]).is_err());
    assert!(sgd.set_learning_rate(f64::NAN).is_err());
    // torch Rprop reads lr only for its initial step sizes: there is no rate to set later.
    let tx = build_optimizer("torch", "rprop", &json!({}), None, &shapes).unwrap();
    let mut rprop = Optimizer::new(tx, shapes.clone(), &views).unwrap();
    assert!(rprop.set_learning_rate(0.1).is_err());
}

#[test]
fn every_registry_optimizer_with_a_learning_rate_argument_lets_it_be_set() {
    // An optimizer built with a constant `lr` / `learning_rate` exposes it: setting it must be
    // possible for every registry name that takes one (Rprop excepted: init-only).
    // One matrix: every registry optimizer takes it (Muon takes matrices only).
    let shapes = vec![vec![4, 3]];
    let p0: Vec<Vec<f32>> = vec![vec![0.1; 12]];
    let views: Vec<&[f32]> = p0.iter().map(|p| p.as_slice()).collect();
    for reg in descent_core::spec::registry_names() {
        let (lib, name) = descent_core::spec::resolve_optimizer(&reg).unwrap();
        // Rprop (torch and optax) reads its rate only for the initial step sizes; Fromage's rate
        // also fixes its decay factor 1/√(1 + lr²) when built.
        if name.ends_with("rprop") || name == "fromage" {
            continue;
        }
        // Built with `build_closure_optimizer` and stepped with an objective: tests/closure.rs
        // checks their learning rates.
        if descent_core::closure::is_closure_optimizer(lib, &name) {
            continue;
        }
        let key = descent_core::spec::lr_key(lib);
        let Ok(tx) = build_optimizer(lib, &name, &json!({ key: 0.01 }), None, &shapes) else { continue };
        let mut opt = Optimizer::new(tx, shapes.clone(), &views).unwrap();
        assert!(!opt.learning_rates().is_empty(), "{reg}: its `{key}` cannot be set");
        opt.set_learning_rate(0.02).unwrap();
    }
}

/// A rate set between steps is part of the saved state, as torch's `state_dict` keeps each param
/// group's `lr`: a restored optimizer steps at it (torch ASGD's next `eta` follows it too), a
/// state saved before any rate was set restores as built, and a state naming a rate the
/// optimizer does not hold is refused whole.
#[test]
fn a_rate_set_between_steps_is_saved_and_restored_with_the_state() {
    let shapes = vec![vec![2], vec![3]];
    let p0: Vec<Vec<f32>> = vec![vec![0.5, -0.5], vec![0.25, 0.0, 1.0]];
    let views: Vec<&[f32]> = p0.iter().map(|p| p.as_slice()).collect();
    let g = vec![vec![0.1f32, -0.2], vec![0.3, 0.4, -0.5]];
    let groups = json!([{"params": [0], "hparams": {}}, {"params": [1], "hparams": {"lr": 0.01}}]);
    for (name, kwargs) in [("adam", json!({"lr": 1e-2})), ("asgd", json!({"lr": 0.1})), ("sgd", json!({"lr": 0.1}))] {
        let build = || {
            let tx = build_optimizer("torch", name, &kwargs, Some(&groups), &shapes).unwrap();
            Optimizer::new(tx, shapes.clone(), &views).unwrap()
        };
        let (mut a, mut b) = (build(), build());
        let (mut pa, mut pb) = (p0.clone(), p0.clone());
        a.step_vecs(&mut pa, &g).unwrap();
        a.set_learning_rates(&[3e-3, 7e-4]).unwrap();
        let saved = a.state_dict().unwrap();
        b.load_state_dict(&saved).unwrap();
        assert_eq!(b.learning_rates(), vec![Some(3e-3), Some(7e-4)], "{name}");
        pb.clone_from(&pa);
        for _ in 0..3 {
            a.step_vecs(&mut pa, &g).unwrap();
            b.step_vecs(&mut pb, &g).unwrap();
        }
        assert_eq!(pa, pb, "{name}: the restored optimizer steps as the saved one");
        // An older state without rates: the rates stay as built.
        let mut old = saved.clone();
        old.scalars.retain(|k, _| !k.starts_with("optimizer.lr."));
        let mut c = build();
        c.load_state_dict(&old).unwrap();
        assert_eq!(c.learning_rates(), vec![Some(kwargs["lr"].as_f64().unwrap()), Some(0.01)], "{name}");
        // A rate the optimizer does not hold, or a negative one: refused, nothing changed.
        for (key, x) in [("optimizer.lr.2", 0.1), ("optimizer.lr.1", -1.0), ("optimizer.lr.01", 0.1)] {
            let mut bad = saved.clone();
            bad.scalars.insert(key.into(), x);
            let mut d = build();
            let err = d.load_state_dict(&bad).unwrap_err().to_string();
            assert!(err.contains(key), "{name} {key}: {err}");
            assert_eq!(d.state_dict().unwrap(), build().state_dict().unwrap(), "{name} {key}: changed");
        }
    }
}

/// optax's `inject_hyperparams` over `optimistic_adam` and `fromage`: the rate set is the one the
/// optimizer was built with in every place it enters (optimistic Adam's α and, when it follows
/// the rate, its optimism; fromage's step and its shrink of the weights), so a rate set before
/// the first step gives the trajectory of an optimizer built with it. The rate reported is the
/// one given, not a sign flip of 1.
#[test]
fn a_rate_set_reaches_every_place_it_enters() {
    for (name, built, set) in [("optimistic_adam", 1e-3, 2e-3), ("fromage", 1e-2, 5e-2)] {
        let shapes = vec![vec![5]];
        let p0 = [0.5f32, -1.0, 2.0, 0.25, -0.75];
        let make = |lr: f64| {
            let tx = build_optimizer("optax", name, &json!({ "learning_rate": lr }), None, &shapes).unwrap();
            Optimizer::new(tx, shapes.clone(), &[&p0]).unwrap()
        };
        let (mut a, mut b) = (make(built), make(set));
        assert_eq!(a.learning_rate(), Some(built), "{name}");
        a.set_learning_rate(set).unwrap();
        let (mut pa, mut pb) = (vec![p0.to_vec()], vec![p0.to_vec()]);
        for t in 0..6 {
            a.step_vecs(&mut pa, &grads(t)).unwrap();
            b.step_vecs(&mut pb, &grads(t)).unwrap();
        }
        assert_eq!(pa, pb, "{name}");
        assert_ne!(pa[0], p0.to_vec(), "{name} moved");
    }
}
