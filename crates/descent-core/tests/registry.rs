//! The registry is its tables: every listed name resolves to itself and builds through its
//! library, and the names an unknown one is told about are listed ones.

use descent_core::spec::{build_optimizer, registry_names, resolve_optimizer, DESCENT, OPTAX, TORCH};
use serde_json::{json, Value};

#[test]
fn every_listed_name_resolves_to_itself() {
    let names = registry_names();
    assert!(names.len() >= TORCH.len() + OPTAX.len() + DESCENT.len());
    for reg in &names {
        let (lib, name) = resolve_optimizer(reg).unwrap_or_else(|e| panic!("{reg}: {e}"));
        assert_eq!(format!("{lib}.{name}"), *reg);
    }
    // Bare names: torch first, then optax, then optax contrib, then descent's own.
    assert_eq!(resolve_optimizer("adam").unwrap(), ("torch", "adam".to_string()));
    assert_eq!(resolve_optimizer("lion").unwrap(), ("optax", "lion".to_string()));
    assert_eq!(resolve_optimizer("prodigy").unwrap(), ("optax", "contrib.prodigy".to_string()));
    assert_eq!(resolve_optimizer("adamw8bit").unwrap(), ("descent", "adamw8bit".to_string()));
}

/// An unknown name is told the nearest listed names (without case or library prefix), not the
/// whole registry, and how many there are.
#[test]
fn an_unknown_name_is_told_the_nearest_listed_names() {
    let n = registry_names().len();
    for (given, near) in
        [("torch.lion", "optax.lion"), ("ADAM", "torch.adam"), ("po.sooap", "po.soap"), ("lookahed", "optax.lookahead")]
    {
        let e = resolve_optimizer(given).unwrap_err().to_string();
        assert!(e.contains(near) && e.contains(&format!("{n} names")) && e.len() < 300, "{given}: {e}");
        assert!(registry_names().contains(&near.to_string()), "{near}");
    }
    let e = resolve_optimizer("zzzzzzzz").unwrap_err().to_string();
    assert!(e.contains(&format!("{n} registry names")) && e.len() < 200, "{e}");
    let Err(e) = build_optimizer("optax", "adamz", &json!({}), None, &[vec![2]]) else { panic!("adamz was built") };
    let e = e.to_string();
    for (name, _) in OPTAX {
        assert!(e.contains(name), "{name} missing from: {e}");
    }
}

#[test]
fn optax_class_spellings_build_but_are_not_listed() {
    let h = json!({"every_k": 2, "inner": ["sgd", {"learning_rate": 0.1}]});
    assert!(build_optimizer("optax", "MultiSteps", &h, None, &[vec![2]]).is_ok());
    assert!(!registry_names().iter().any(|n| n == "optax.MultiSteps"));
}

/// Wrappers take their library's argument names as well as the reference cases' (`every_k` and
/// `inner`): optax's `MultiSteps(opt, every_k_schedule)`, `lookahead(fast_optimizer, …)`,
/// pytorch_optimizer's `Lookahead(optimizer, …)`, the same numbers either way; both names at
/// once are refused naming the argument.
#[test]
fn wrappers_take_their_librarys_argument_names() {
    let shapes = [vec![3]];
    let run = |lib: &str, name: &str, h: Value| -> Result<Vec<f32>, String> {
        let mut opt = build_optimizer(lib, name, &h, None, &shapes).map_err(|e| e.to_string())?;
        let mut p = vec![vec![1.0f32, -2.0, 0.5]];
        opt.init(&shapes, &[&p[0]]).unwrap();
        for t in 0..7 {
            let mut u = vec![p[0].iter().map(|x| x * (1.0 + t as f32 * 0.1)).collect::<Vec<f32>>()];
            opt.update(&mut u, &[&p[0]]).unwrap();
            p[0].iter_mut().zip(&u[0]).for_each(|(x, d)| *x += d);
        }
        Ok(p.remove(0))
    };
    let sgd = json!(["sgd", {"learning_rate": 0.1, "momentum": 0.9}]);
    let cases = [
        ("optax", "multisteps", json!({"every_k": 2, "inner": sgd}), json!({"every_k_schedule": 2, "opt": sgd})),
        (
            "optax",
            "lookahead",
            json!({"sync_period": 3, "slow_step_size": 0.5, "inner": sgd}),
            json!({"sync_period": 3, "slow_step_size": 0.5, "fast_optimizer": sgd, "reset_state": false}),
        ),
        (
            "po",
            "lookahead",
            json!({"k": 3, "inner": ["torch.optim.SGD", {"lr": 0.1}]}),
            json!({"k": 3, "optimizer": ["torch.sgd", {"lr": 0.1}]}),
        ),
    ];
    for (lib, name, cases_names, library_names) in cases {
        assert_eq!(run(lib, name, cases_names).unwrap(), run(lib, name, library_names).unwrap(), "{lib}.{name}");
    }
    let both = run("optax", "multisteps", json!({"every_k": 2, "every_k_schedule": 2, "inner": sgd})).unwrap_err();
    assert!(both.contains("`every_k_schedule`") && both.contains("give one"), "{both}");
    // `reset_state` is honoured: the momentum starts again after each sync, so the path differs.
    let lookahead = |reset: bool| {
        run("optax", "lookahead", json!({"sync_period": 3, "slow_step_size": 0.5, "inner": sgd, "reset_state": reset}))
    };
    assert_ne!(lookahead(true).unwrap(), lookahead(false).unwrap());
}
