//! Cases the project generated itself with the libraries (`tests/cases/`, written by the scripts
//! named in `tests/cases/README.md`), for options the shared reference sets do not exercise:
//! optax 0.2.8's `contrib.muon` options and the `mu_dtype = bfloat16` moments of optax's Adam
//! family; pytorch_optimizer 4.1.0's AdaFactor with `lr=None`; non-default arguments, schedules,
//! wrappers and objective-driven cases. Replayed under the same pass rule as the shared sets.

mod common;

/// Replays every case of `tests/cases/FOLDER` (at least `min_files`), none left out.
fn replay_cases(folder: &str, min_files: usize) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases").join(folder);
    common::replay_dir(&dir, min_files, &[]);
}

#[test]
fn generated_optax_cases_pass() {
    replay_cases("optax", 27);
}

#[test]
fn generated_pytorch_optimizer_cases_pass() {
    replay_cases("po", 2);
}

/// Non-default keyword arguments of about sixty optimizers and transformations of torch 2.15,
/// optax 0.2.8 and pytorch_optimizer 4.1.0 (`scripts/option_cases/`).
#[test]
fn generated_option_cases_pass() {
    replay_cases("options", 287);
}

/// torch 2.15 and optax 0.2.8 schedules with unusual arguments: one-cycle boundaries that
/// coincide, compositions with CyclicLR first or factors of 0, schedules past their ends,
/// float32 cosines of large rates, negative optax offsets (`scripts/schedule_cases/`).
#[test]
fn generated_schedule_cases_pass() {
    replay_cases("schedules", 150);
}

/// optax 0.2.8's wrappers and compositions with unusual arguments: long chains, MultiSteps with
/// skip functions and NaN gradients, apply_if_finite past its error limit, lookahead, masks and
/// partitions with the inner transformations' masks written for every parameter, as optax reads
/// them (`scripts/wrapper_cases/`).
#[test]
fn generated_wrapper_cases_pass() {
    replay_cases("wrappers", 163);
}

/// Optimizers that evaluate the objective, on the reference set's objectives with other sizes
/// and seeds and non-default arguments: torch's and optax's L-BFGS (line searches, histories,
/// tolerances, the evaluation budget binding inside torch's strong-Wolfe search, `maximize`),
/// Polyak SGD, MoMo, SAM in its three spellings (`scripts/problem_cases/`).
#[test]
fn generated_problem_cases_pass() {
    replay_cases("problems", 101);
}
