//! Every optimizer of the reference set, on random data of awkward sizes: the fused step (chunks
//! across threads, sub-blocks, a chain's tail folded into its kernel) against the link-by-link path
//! over whole buffers, and the AVX2 kernels against their baseline build.
//!
//! One test in its own binary: it switches the process-wide SIMD dispatch off and on.

mod common;

use common::{close, random_problem, run_steps};

use descent_core::kernel::{CHUNK, PARALLEL_MIN};
use descent_core::optimizer::Optimizer;
use descent_core::replay::{Case, OptimCase};
use descent_core::spec::build_optimizer;
use descent_core::transforms::set_simd;

/// The case's parameters with the same ranks, made large and of sizes that are multiples of no
/// vector width: vectors span several thread chunks, matrices several blocks.
fn awkward(shapes: &[Vec<usize>]) -> Vec<Vec<usize>> {
    shapes
        .iter()
        .map(|s| match s.as_slice() {
            [_] => vec![PARALLEL_MIN + CHUNK + 13],
            [r, c] => vec![r * 1001 + 3, *c],
            other => other.to_vec(),
        })
        .collect()
}

/// Chains that exercise each way a chain folds into its kernel's step: a clipping or L2 head, a
/// stateful prologue (block path), a sign or clip before the tail, a tail alone, links that are
/// all maps.
const CHAINS: &[&str] = &[
    r#"[["clip", {"max_delta": 0.5}], ["scale_by_adam", {}], ["add_decayed_weights", {"weight_decay": 0.01}], ["scale_by_learning_rate", {"learning_rate": 0.01}]]"#,
    r#"[["clip_by_global_norm", {"max_norm": 1.0}], ["scale_by_adam", {}], ["scale_by_learning_rate", {"learning_rate": 0.01}]]"#,
    r#"[["add_decayed_weights", {"weight_decay": 0.1}], ["scale_by_rms", {}], ["scale_by_learning_rate", {"learning_rate": 0.01}]]"#,
    r#"[["trace", {"decay": 0.9}], ["scale_by_sign", {}], ["scale_by_learning_rate", {"learning_rate": 0.01}]]"#,
    r#"[["clip", {"max_delta": 0.5}], ["trace", {"decay": 0.9}], ["scale_by_sign", {}]]"#,
    r#"[["add_decayed_weights", {"weight_decay": 0.1}], ["scale_by_learning_rate", {"learning_rate": 0.01}]]"#,
    r#"[["scale_by_adam", {}]]"#,
    r#"[["scale_by_adam", {}], ["clip", {"max_delta": 0.5}], ["scale_by_learning_rate", {"learning_rate": 0.01}]]"#,
    r#"[["clip", {"max_delta": 0.5}], ["scale_by_sign", {}], ["scale_by_learning_rate", {"learning_rate": 0.01}]]"#,
    r#"[["scale_by_adam", {"mu_dtype": "bfloat16", "nesterov": true}], ["add_decayed_weights", {"weight_decay": 0.01}], ["scale_by_learning_rate", {"learning_rate": 0.01}]]"#, // Per-parameter masks (two parameters): a masked affine link in the tail, a masked kernel, a
    // masked head that zeroes, a masked reduction at the head and after a lone map, and the
    // accumulating and clamping links of the same family.
    r#"[["scale_by_adam", {}], ["masked", {"inner": ["add_decayed_weights", {"weight_decay": 0.1}], "mask": [true, false]}], ["scale_by_learning_rate", {"learning_rate": 0.01}]]"#,
    r#"[["masked", {"inner": ["scale_by_adam", {}], "mask": [false, true]}], ["scale", {"step_size": -0.01}]]"#,
    r#"[["freeze", {"mask": [true, false]}], ["adamw", {"learning_rate": 0.01, "weight_decay": 0.1}]]"#,
    r#"[["masked", {"inner": ["clip_by_global_norm", {"max_norm": 1.0}], "mask": [false, true]}], ["scale_by_adam", {}], ["scale_by_learning_rate", {"learning_rate": 0.01}]]"#,
    r#"[["add_decayed_weights", {"weight_decay": 0.1}], ["masked", {"inner": ["scale_by_trust_ratio", {}], "mask": [true, false]}], ["scale_by_learning_rate", {"learning_rate": 0.01}]]"#,
    r#"[["zero_nans", {}], ["scale_by_adam", {}], ["apply_every", {"k": 2}], ["scale_by_learning_rate", {"learning_rate": 0.01}], ["keep_params_nonnegative", {}]]"#,
];

/// A case with no recorded trajectory, only an optimizer to build on the usual two shapes.
fn case(library: &str, optimizer: &str, hparams: serde_json::Value) -> Case {
    Case::Optim(OptimCase {
        id: format!("{library}.{optimizer} {hparams}"),
        library: library.into(),
        optimizer: optimizer.into(),
        hparams,
        param_groups: None,
        shapes: vec![vec![5], vec![4, 3]],
        init: vec![],
        grads: vec![],
        expected: vec![],
        lr_per_step: None,
        sparse_grads: None,
        rel: 0.0,
        abs: 0.0,
    })
}

#[test]
fn fused_and_simd_kernels_match_the_reference_paths() {
    let mut checked = 0;
    let mut seen = std::collections::HashSet::new();
    let chains = CHAINS.iter().map(|links| {
        let links = serde_json::from_str::<serde_json::Value>(links).unwrap();
        case("optax", "chain", serde_json::json!({ "links": links }))
    });
    // descent's own optimizers, which the reference set does not hold: 8-bit Adam with and
    // without a decay term in its tail; and Adafactor's three-pass step on factored moments
    // (the reference case's tensors are too small to factor).
    let own = ["adamw8bit", "adam8bit"]
        .map(|name| case("descent", name, serde_json::json!({"lr": 0.01})))
        .into_iter()
        .chain([case("optax", "adafactor", serde_json::json!({"learning_rate": 0.01, "min_dim_size_to_factor": 2}))])
        // Algorithms of the second reference set: elementwise kernels, a reduction ahead of a
        // scale (alone, and after a weight-decay head), and SparseAdam's dense form.
        .chain([
            case("optax", "contrib.acprop", serde_json::json!({"learning_rate": 0.01, "weight_decay": 0.01})),
            case(
                "optax",
                "contrib.simplified_ademamix",
                serde_json::json!({"learning_rate": 0.01, "alpha": 2.0, "weight_decay": 0.01}),
            ),
            case("optax", "contrib.dowg", serde_json::json!({})),
            case("optax", "contrib.dowg", serde_json::json!({"weight_decay": 0.01})),
            case("optax", "optimistic_adam", serde_json::json!({"learning_rate": 0.01, "optimism": 0.02})),
            case(
                "optax",
                "chain",
                serde_json::json!({"links": [["normalize_by_update_norm", {}], ["sgd", {"learning_rate": 0.03, "momentum": 0.9}]]}),
            ),
            case("torch", "sparseadam", serde_json::json!({"lr": 0.01})),
        ])
        // A partition at the top: the optimizer's fused step goes through each group's kernel.
        .chain([
            case(
                "optax",
                "selective_transform",
                serde_json::json!({"optimizer": ["adamw", {"learning_rate": 0.01, "weight_decay": 0.1}], "freeze_mask": [false, true]}),
            ),
            case(
                "optax",
                "partition",
                serde_json::json!({"transforms": {"a": ["adam", {"learning_rate": 0.01}], "b": ["sgd", {"learning_rate": 0.05, "momentum": 0.9}]}, "param_labels": ["b", "a"]}),
            ),
        ]);
    for case in common::all_cases().into_iter().chain(chains).chain(own) {
        let Case::Optim(c) = case else { continue };
        if !seen.insert((c.library.clone(), c.optimizer.clone(), c.hparams.to_string(), c.shapes.clone())) {
            continue;
        }
        let shapes = awkward(&c.shapes);
        let (init, grads) = random_problem(&shapes, 5);
        let tx = || {
            let tx = build_optimizer(&c.library, &c.optimizer, &c.hparams, c.param_groups.as_ref(), &shapes)
                .unwrap_or_else(|e| panic!("{}: {e}", c.id));
            let views: Vec<&[f32]> = init.iter().map(|v| v.as_slice()).collect();
            Optimizer::new(tx, shapes.clone(), &views).unwrap()
        };
        let fused = run_steps(tx(), &init, &grads, true);
        let unfused = run_steps(tx(), &init, &grads, false);
        set_simd(false);
        let baseline = run_steps(tx(), &init, &grads, true);
        set_simd(true);
        for (k, ((f, u), b)) in fused.iter().zip(&unfused).zip(&baseline).enumerate() {
            for (j, ((x, y), z)) in f.iter().zip(u).zip(b).enumerate() {
                assert!(close(*x, *y), "{}: tensor {k}[{j}]: fused {x} vs link by link {y}", c.id);
                assert!(close(*x, *z), "{}: tensor {k}[{j}]: AVX2 {x} vs baseline {z}", c.id);
            }
        }
        // The step moved the parameters: the comparison is not of untouched buffers.
        assert!(fused.iter().flatten().zip(init.iter().flatten()).any(|(a, b)| a != b), "{}: no change", c.id);
        checked += 1;
    }
    assert!(checked >= 61 + CHAINS.len() + 5, "only {checked} optimizer configurations checked");
}
