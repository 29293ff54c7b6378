//! Cases the project generated itself with the libraries (`tests/cases/`, written by the scripts
//! named in `tests/cases/README.md`), for options the shared reference sets do not exercise:
//! optax 0.2.8's `contrib.muon` options and the `mu_dtype = bfloat16` moments of optax's Adam
//! family. Replayed under the same pass rule as the shared sets.

mod common;

#[test]
fn generated_optax_cases_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/optax");
    common::replay_dir(&dir, 21, &[]);
}
