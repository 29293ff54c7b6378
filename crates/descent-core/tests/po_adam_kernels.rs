//! pytorch_optimizer's Adam family on tensors of awkward sizes (thread chunks, blocks and slices
//! of Ranger's centralization straddling each other): the fused step against the path over whole
//! buffers, and the AVX2 kernels against their baseline build.
//!
//! One test in its own binary: it switches the process-wide SIMD dispatch off and on.

use descent_core::kernel::{CHUNK, PARALLEL_MIN};
use descent_core::optimizer::Optimizer;
use descent_core::spec::build_optimizer;
use descent_core::transforms::set_simd;
use serde_json::json;

mod common;

use common::{close, random, random_problem, run_steps};

#[test]
fn fused_and_simd_kernels_match_the_whole_buffer_path() {
    let shapes = vec![vec![PARALLEL_MIN + CHUNK + 13], vec![6007, 5], vec![1001, 3, 7], vec![]];
    let (init, grads) = random_problem(&shapes, 4);
    let configs = [
        ("adabound", json!({"weight_decay": 0.1, "ams_bound": true})),
        ("laprop", json!({"centered": true, "steps_before_using_centered": 1, "weight_decay": 0.1})),
        ("qhadam", json!({"nus": [0.7, 0.9], "weight_decay": 0.1})),
        ("tiger", json!({})),
        ("lion", json!({"weight_decay": 0.1})),
        ("yogi", json!({})),
        ("adabelief", json!({"rectify": true, "weight_decay": 0.1})),
        ("diffgrad", json!({"ams_bound": true})),
        ("adan", json!({"weight_decay": 0.1, "max_grad_norm": 1.0})),
        ("ranger", json!({"k": 2, "weight_decay": 0.1, "weight_decouple": false})),
        ("stableadamw", json!({})),
        ("adamp", json!({"weight_decay": 0.1})),
        ("sgdp", json!({"momentum": 0.9})),
        ("came", json!({})),
        ("adafactor", json!({})),
        ("mars", json!({})),
        ("lamb", json!({"weight_decay": 0.1})),
    ];
    for (name, mut h) in configs {
        h["lr"] = json!(0.01);
        let tx = || {
            let tx = build_optimizer("po", name, &h, None, &shapes).unwrap();
            let views: Vec<&[f32]> = init.iter().map(|v| v.as_slice()).collect();
            Optimizer::new(tx, shapes.clone(), &views).unwrap()
        };
        let run = |fused: bool| run_steps(tx(), &init, &grads, fused);
        let fused = run(true);
        let unfused = run(false);
        set_simd(false);
        let baseline = run(true);
        set_simd(true);
        for (k, ((f, u), b)) in fused.iter().zip(&unfused).zip(&baseline).enumerate() {
            for (j, ((x, y), z)) in f.iter().zip(u).zip(b).enumerate() {
                assert!(close(*x, *y), "po.{name}: tensor {k}[{j}]: fused {x} vs whole buffers {y}");
                assert!(close(*x, *z), "po.{name}: tensor {k}[{j}]: AVX2 {x} vs baseline {z}");
            }
        }
        assert!(fused.iter().flatten().zip(init.iter().flatten()).any(|(a, b)| a != b), "po.{name}: no change");
    }
}

/// Ranger centralizes each slice along the first axis, however the slices fall across the
/// fused step's blocks and threads: the same as centralizing each slice by hand first.
#[test]
fn ranger_centralizes_slices_across_blocks() {
    let shapes = vec![vec![3001, 37]];
    let init = vec![random(3001 * 37, 7)];
    let g = vec![random(3001 * 37, 8)];
    let mut centered = g[0].clone();
    for row in centered.chunks_mut(37) {
        let mean = (row.iter().map(|&x| x as f64).sum::<f64>() / 37.0) as f32;
        row.iter_mut().for_each(|x| *x -= mean);
    }
    let step = |h: serde_json::Value, g: &[Vec<f32>]| {
        let tx = build_optimizer("po", "ranger", &h, None, &shapes).unwrap();
        let mut opt = Optimizer::new(tx, shapes.clone(), &[&init[0]]).unwrap();
        let mut p = init.clone();
        opt.step_vecs(&mut p, g).unwrap();
        p
    };
    let a = step(json!({"lr": 0.01}), &g);
    let b = step(json!({"lr": 0.01, "use_gc": false}), &[centered]);
    for (x, y) in a[0].iter().zip(&b[0]) {
        assert!(close(*x, *y), "{x} vs {y}");
    }
}
