//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::PathBuf;

use descent_core::replay::{collect_case_files, load_case, Case};

/// `shared/reference` beside the repository.
pub fn reference_dir() -> PathBuf {
    shared_dir("reference")
}

/// A folder of `shared/` beside the repository (`reference`, `reference-r2`, …).
pub fn shared_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared").join(name);
    assert!(
        dir.is_dir(),
        "reference set not found at {} (the shared folder must sit beside the repository)",
        dir.display()
    );
    dir
}

/// Every reference case, parsed.
pub fn all_cases() -> Vec<Case> {
    collect_case_files(&[reference_dir()])
        .unwrap()
        .iter()
        .map(|f| load_case(f).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// Replays every case file of `folder` (at least `min_files` of them) under the pass rule. The
/// cases whose id is one of `not_implemented`'s families (an id prefix ending at a dot) are
/// skipped; every other case must pass, and a skipped one that passes must come off the list.
pub fn replay_folder(folder: &str, min_files: usize, not_implemented: &[(&str, &str)]) {
    use descent_core::replay::run_and_check;
    let files = collect_case_files(&[shared_dir(folder)]).unwrap();
    assert!(files.len() >= min_files, "expected the whole {folder} set, found {} files", files.len());
    let (mut failures, mut unexpectedly_passing, mut passed) = (vec![], vec![], 0);
    for f in &files {
        let id = f.file_stem().unwrap().to_string_lossy().to_string();
        let skipped = not_implemented.iter().any(|(p, _)| id == *p || id.starts_with(&format!("{p}.")));
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
    eprintln!("{passed} cases of {folder} pass");
    assert!(failures.is_empty(), "failing cases:\n{}", failures.join("\n"));
    assert!(
        unexpectedly_passing.is_empty(),
        "now passing, remove from the not-implemented list: {unexpectedly_passing:?}"
    );
}
