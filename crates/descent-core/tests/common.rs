//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::PathBuf;

use descent_core::reference::{collect_case_files, load_case, Case};

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
