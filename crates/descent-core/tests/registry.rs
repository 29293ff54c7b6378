//! The registry is its tables: every listed name resolves to itself and builds through its
//! library, and the names an unknown one is told about are the listed ones.

use descent_core::spec::{build_optimizer, registry_names, resolve_optimizer, DESCENT, OPTAX, TORCH};
use serde_json::json;

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

#[test]
fn an_unknown_name_is_told_the_listed_names() {
    let e = resolve_optimizer("torch.lion").unwrap_err().to_string();
    for reg in registry_names() {
        assert!(e.contains(&reg), "{reg} missing from: {e}");
    }
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
