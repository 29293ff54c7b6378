//! The second reference set (`shared/reference-r2`), replayed through descent under the pass rule
//! of `shared/reference/README.md`, family by family as they are implemented.

mod common;

use descent_core::reference::{collect_case_files, load_case, run_and_check};

/// Case families (id prefixes) of the second set that descent does not implement yet, with what
/// is missing. Every other case must pass; one of these that passes must come off the list.
const NOT_IMPLEMENTED: &[(&str, &str)] = &[
    ("optax.contrib.galore", "optimizer"),
    ("optax.contrib.momo", "problem cases (an objective instead of gradients)"),
    ("optax.contrib.momo_adam", "problem cases"),
    ("optax.contrib.sam", "problem cases"),
    ("optax.lbfgs", "problem cases"),
    ("optax.polyak_sgd", "problem cases"),
    ("po", "the pytorch_optimizer library"),
    ("torch.lbfgs", "problem cases"),
];

#[test]
fn second_reference_set_passes_where_implemented() {
    let files = collect_case_files(&[common::shared_dir("reference-r2")]).unwrap();
    assert!(files.len() >= 75, "expected the whole second reference set, found {} files", files.len());
    let (mut failures, mut unexpectedly_passing, mut passed) = (vec![], vec![], 0);
    for f in &files {
        let id = f.file_stem().unwrap().to_string_lossy().to_string();
        let skipped = NOT_IMPLEMENTED.iter().any(|(p, _)| id == *p || id.starts_with(&format!("{p}.")));
        let outcome = load_case(f).and_then(|c| run_and_check(&c));
        match (outcome, skipped) {
            (Ok(r), false) if r.passed => {
                eprintln!("{id}: {:.3}x tolerance at worst (step {})", r.ratio, r.step);
                passed += 1
            }
            (Ok(r), true) if r.passed => unexpectedly_passing.push(id),
            (_, true) => {}
            (Ok(r), false) => failures.push(format!("{id}: error {:.3}x tolerance at step {}", r.ratio, r.step)),
            (Err(e), false) => failures.push(format!("{id}: {e}")),
        }
    }
    eprintln!("{passed} cases of the second set pass");
    assert!(failures.is_empty(), "failing cases:\n{}", failures.join("\n"));
    assert!(unexpectedly_passing.is_empty(), "now passing, remove from NOT_IMPLEMENTED: {unexpectedly_passing:?}");
}
