//! Tensors long enough that fused steps prefetch their buffers ahead (`PREFETCH_MIN` and more):
//! the streaming kernels, the single loops of plain SGD, momentum and LARS, LAMB's
//! update-and-norm pass (non-temporal stores) and Adafactor's two passes give the values of the
//! link-by-link path, and the prefetches stop at each buffer's end.

use descent_core::kernel::PREFETCH_MIN;
use descent_core::optimizer::Optimizer;
use descent_core::spec::build_optimizer;
use serde_json::json;

mod common;

use common::{close, random_problem, run_steps};

#[test]
fn streaming_steps_match_the_link_by_link_path() {
    let cases = [
        ("torch", "sgd", json!({"lr": 0.01})),
        ("torch", "sgd", json!({"lr": 0.01, "weight_decay": 0.01, "maximize": true})),
        ("torch", "sgd", json!({"lr": 0.01, "momentum": 0.9, "nesterov": true, "weight_decay": 1e-4})),
        ("torch", "sgd", json!({"lr": 0.01, "momentum": 0.9, "dampening": 0.1})),
        ("torch", "adamw", json!({"lr": 0.001})),
        ("optax", "yogi", json!({"learning_rate": 0.001})),
        ("optax", "sgd", json!({"learning_rate": 0.01})),
        ("optax", "lamb", json!({"learning_rate": 0.001})),
        ("optax", "lamb", json!({"learning_rate": 0.001, "weight_decay": 0.01})),
        ("optax", "sgd", json!({"learning_rate": 0.01, "momentum": 0.9, "nesterov": true})),
        ("optax", "lars", json!({"learning_rate": 0.1})),
        ("optax", "lars", json!({"learning_rate": 0.1, "weight_decay": 0.01, "nesterov": true})),
        (
            "optax",
            "chain",
            json!({"links": [["trace", {"decay": 0.9}], ["add_decayed_weights", {"weight_decay": 0.01}], ["scale_by_learning_rate", {"learning_rate": 0.01}]]}),
        ),
        (
            "optax",
            "chain",
            json!({"links": [["clip", {"max_delta": 0.5}], ["scale_by_adam", {}], ["add_decayed_weights", {"weight_decay": 0.01}], ["scale_by_learning_rate", {"learning_rate": 0.01}]]}),
        ),
        ("po", "adan", json!({})),
        ("descent", "adamw8bit", json!({"lr": 0.01})),
        ("optax", "adafactor", json!({"learning_rate": 0.01})),
        ("torch", "adafactor", json!({"lr": 0.01, "weight_decay": 0.01})),
    ];
    // One tensor that streams, its length a multiple of no vector width, and one that does not.
    let shapes = vec![vec![PREFETCH_MIN + 1013], vec![777]];
    let (init, grads) = random_problem(&shapes, 2);
    for (library, name, hparams) in cases {
        let id = format!("{library}.{name} {hparams}");
        let run = |fused: bool| {
            let tx = build_optimizer(library, name, &hparams, None, &shapes).unwrap_or_else(|e| panic!("{id}: {e}"));
            let views: Vec<&[f32]> = init.iter().map(|v| v.as_slice()).collect();
            run_steps(Optimizer::new(tx, shapes.clone(), &views).unwrap(), &init, &grads, fused)
        };
        let (fused, unfused) = (run(true), run(false));
        for (k, (f, u)) in fused.iter().zip(&unfused).enumerate() {
            for (j, (x, y)) in f.iter().zip(u).enumerate() {
                assert!(close(*x, *y), "{id}: tensor {k}[{j}]: fused {x} vs link by link {y}");
            }
        }
        assert!(fused[0].iter().zip(&init[0]).any(|(a, b)| a != b), "{id}: no change");
    }
}
