//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::PathBuf;

use descent_core::optimizer::Optimizer;
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
    replay_dir(&shared_dir(folder), min_files, not_implemented)
}

/// [`replay_folder`] on a folder given by its path.
pub fn replay_dir(dir: &std::path::Path, min_files: usize, not_implemented: &[(&str, &str)]) {
    use descent_core::replay::run_and_check;
    let folder = dir.display();
    let files = collect_case_files(&[dir.to_path_buf()]).unwrap();
    assert!(files.len() >= min_files, "expected the whole {folder} set, found {} files", files.len());
    let (mut failures, mut unexpectedly_passing, mut passed) = (vec![], vec![], 0);
    for f in &files {
        let id = f.file_stem().unwrap().to_string_lossy().to_string();
        let skipped = not_implemented.iter().any(|(p, _)| id == *p || id.starts_with(&format!("{p}.")));
        // Every field of the set is one the replay reads (or documents the case): the warning for
        // unknown fields is kept for misspelt ones.
        let unknown = descent_core::replay::unknown_fields(&std::fs::read_to_string(f).unwrap());
        assert!(unknown.is_empty(), "{id}: fields no replay reads: {unknown:?}");
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

/// Deterministic values in (−1, 1) from a 64-bit LCG.
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Random parameters of these shapes (tensor `k` seeded `k`) and `steps` sets of random
/// gradients for them (step `t`, tensor `k` seeded `100 + 10t + k`).
pub fn random_problem(shapes: &[Vec<usize>], steps: usize) -> (Vec<Vec<f32>>, Vec<Vec<Vec<f32>>>) {
    let init: Vec<Vec<f32>> = shapes.iter().enumerate().map(|(k, s)| random(s.iter().product(), k as u64)).collect();
    let grads = (0..steps as u64)
        .map(|t| init.iter().enumerate().map(|(k, p)| random(p.len(), 100 + 10 * t + k as u64)).collect())
        .collect();
    (init, grads)
}

/// The parameters after `opt` takes a step on each set of `grads` from `init`: its fused step,
/// or with `fused` false the link-by-link path over whole buffers.
pub fn run_steps(mut opt: Optimizer, init: &[Vec<f32>], grads: &[Vec<Vec<f32>>], fused: bool) -> Vec<Vec<f32>> {
    let mut params = init.to_vec();
    for g in grads {
        let mut p: Vec<&mut [f32]> = params.iter_mut().map(|v| v.as_mut_slice()).collect();
        let g: Vec<&[f32]> = g.iter().map(|v| v.as_slice()).collect();
        if fused {
            opt.step(&mut p, &g).unwrap();
        } else {
            opt.step_unfused(&mut p, &g).unwrap();
        }
    }
    params
}

/// Within a few units in the last place of the larger value, or of `floor`.
pub fn close_above(a: f32, b: f32, floor: f32) -> bool {
    a.to_bits() == b.to_bits() || (a - b).abs() <= 4.0 * f32::EPSILON * a.abs().max(b.abs()).max(floor)
}

/// Within a few units in the last place of the larger value (a chain's folded tail may round
/// differently from its links one by one).
pub fn close(a: f32, b: f32) -> bool {
    close_above(a, b, 1e-30)
}
