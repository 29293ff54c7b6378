//! The further pytorch_optimizer optimizers (`po.ademamix`, `po.prodigy`, …) on random data of
//! awkward sizes: the fused step (chunks across threads, sub-blocks, a reduction pass first)
//! against the path over whole buffers, and the AVX2 kernels against their baseline build.
//!
//! One test in its own binary: it switches the process-wide SIMD dispatch off and on.

mod common;

use descent_core::kernel::{CHUNK, PARALLEL_MIN};
use descent_core::optimizer::Optimizer;
use descent_core::replay::{collect_case_files, load_case, Case};
use descent_core::spec::build_optimizer;
use descent_core::transforms::set_simd;
use serde_json::json;

use common::{close_above, random_problem, run_steps};

#[test]
fn fused_and_simd_kernels_match_the_reference_paths() {
    let files = collect_case_files(&[common::shared_dir("reference-r2")]).unwrap();
    let mut configs: Vec<(String, serde_json::Value)> = files
        .iter()
        .filter(|f| {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            [
                "ademamix",
                "adopt",
                "aggmo",
                "dadaptadam",
                "lookahead",
                "madgrad",
                "novograd",
                "prodigy",
                "ranger21",
                "schedulefreeradam",
                "spam",
            ]
            .iter()
            .any(|fam| name.starts_with(&format!("po.{fam}.")))
        })
        .map(|f| match load_case(f).unwrap() {
            Case::Optim(c) => (c.optimizer, c.hparams),
            _ => unreachable!(),
        })
        .collect();
    // Options the cases leave at their defaults.
    configs.extend([
        ("madgrad".into(), json!({"lr": 0.01, "momentum": 0.0, "weight_decay": 0.01, "weight_decouple": true})),
        ("adopt".into(), json!({"lr": 0.01, "weight_decay": 0.01, "clip_lambda": null})),
        ("novograd".into(), json!({"lr": 0.01, "grad_averaging": true, "weight_decay": 0.01})),
        ("prodigy".into(), json!({"lr": 1.0, "eps": null, "weight_decay": 0.01, "bias_correction": true})),
        ("dadaptadam".into(), json!({"lr": 1.0, "weight_decay": 0.01, "bias_correction": true})),
        ("schedulefreeradam".into(), json!({"lr": 0.01, "silent_sgd_phase": false, "weight_decay": 0.01})),
        ("aggmo".into(), json!({"lr": 0.01, "betas": [0.5, 0.9, 0.5], "weight_decay": 0.01, "weight_decouple": true})),
    ]);
    let shapes = vec![vec![6007, 4], vec![PARALLEL_MIN + CHUNK + 13], vec![3, 2, 2]];
    let (init, grads) = random_problem(&shapes, 6);
    for (name, hparams) in &configs {
        let id = format!("po.{name} {hparams}");
        let build = || {
            let tx = build_optimizer("po", name, hparams, None, &shapes).unwrap_or_else(|e| panic!("{id}: {e}"));
            let views: Vec<&[f32]> = init.iter().map(|v| v.as_slice()).collect();
            Optimizer::new(tx, shapes.clone(), &views).unwrap()
        };
        let run = |fused: bool| run_steps(build(), &init, &grads, fused);
        // Lookahead's path over whole buffers returns `p′ − p`, whose rounding is that of the
        // parameters' scale (about 1 here), not of the result's.
        let floor = if name == "lookahead" { 1.0 } else { 1e-30 };
        let fused = run(true);
        let unfused = run(false);
        set_simd(false);
        let baseline = run(true);
        set_simd(true);
        for (k, ((f, u), b)) in fused.iter().zip(&unfused).zip(&baseline).enumerate() {
            for (j, ((x, y), z)) in f.iter().zip(u).zip(b).enumerate() {
                assert!(close_above(*x, *y, floor), "{id}: tensor {k}[{j}]: fused {x} vs whole buffers {y}");
                assert!(close_above(*x, *z, 1e-30), "{id}: tensor {k}[{j}]: AVX2 {x} vs baseline {z}");
            }
        }
        assert!(fused.iter().flatten().zip(init.iter().flatten()).any(|(a, b)| a != b), "{id}: no change");
    }
}
