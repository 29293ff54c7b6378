//! Parameter shapes that overflow, or name long axes with no elements, are errors or empty state:
//! never a panic, an abort, or an allocation out of proportion to the parameters given.

use descent_core::spec::{build_optimizer, lr_key, registry_names, resolve_optimizer};
use descent_core::transform::{check_shapes, shape_numel, MAX_NUMEL};
use descent_core::transforms::{ScaleByAdam, ScaleByAdamConfig};
use descent_core::{chain, Optimizer};
use serde_json::json;

const HUGE: usize = 1 << 32;

#[test]
fn shapes_whose_product_overflows_are_refused_before_anything_is_built() {
    for shape in [vec![HUGE, HUGE], vec![usize::MAX, 2], vec![0, HUGE, HUGE], vec![HUGE, HUGE, 0], vec![MAX_NUMEL + 1]]
    {
        let e = shape_numel(&shape).unwrap_err().to_string();
        assert!(e.contains("too large") && e.contains(&format!("{shape:?}")), "{e}");
        let shapes = vec![vec![2], shape.clone()];
        let e = check_shapes(&shapes).unwrap_err().to_string();
        assert!(e.contains("parameter 1") && e.contains("too large"), "{e}");
        for (lib, name, h) in [
            ("torch", "sgd", json!({"lr": 0.1})),
            ("torch", "adafactor", json!({})),
            ("optax", "adafactor", json!({"learning_rate": 0.1})),
            ("optax", "sm3", json!({"learning_rate": 0.1})),
            ("optax", "contrib.muon", json!({"learning_rate": 0.1})),
            ("descent", "adamw8bit", json!({})),
        ] {
            let e = build_optimizer(lib, name, &h, None, &shapes).err().unwrap_or_else(|| panic!("{lib}.{name}"));
            assert!(e.to_string().contains("too large"), "{lib}.{name}: {e}");
        }
        let tx = chain(vec![Box::new(ScaleByAdam::new(ScaleByAdamConfig::default()))]);
        let params = [vec![0.0f32; 2], vec![]];
        let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
        let e = Optimizer::new(tx, shapes, &views).err().unwrap().to_string();
        assert!(e.contains("too large"), "{e}");
    }
    assert_eq!(shape_numel(&[3, 0, 5]).unwrap(), 0);
    assert_eq!(shape_numel(&[]).unwrap(), 1);
}

/// The hyper-parameters each optimizer needs beyond its learning rate.
fn hparams(lib: &str, name: &str) -> serde_json::Value {
    let mut h = json!({});
    h[lr_key(lib)] = json!(0.01);
    let extra = match name {
        "multisteps" => json!({"every_k": 2, "inner": ["sgd", {"learning_rate": 0.1}]}),
        "lookahead" => json!({"sync_period": 2, "slow_step_size": 0.5, "inner": ["sgd", {"learning_rate": 0.1}]}),
        "chain" => {
            json!({"links": [["centralize", {}], ["adaptive_grad_clip", {"clipping": 0.1}], ["sm3", {"learning_rate": 0.1}]]})
        }
        "adaptive_grad_clip" => json!({"clipping": 0.1}),
        "clip" => json!({"max_delta": 1.0}),
        "clip_by_block_rms" => json!({"threshold": 1.0}),
        "clip_by_global_norm" => json!({"max_norm": 1.0}),
        "ema" | "trace" => json!({"decay": 0.9}),
        "scale" => json!({"step_size": 0.1}),
        "adafactor" if lib == "optax" => json!({"min_dim_size_to_factor": 0}),
        _ => json!({}),
    };
    for (k, v) in extra.as_object().unwrap() {
        h[k] = v.clone();
    }
    h
}

/// Empty tensors whose other axes are long: built, stepped, and given no per-axis state.
#[test]
fn empty_tensors_with_long_axes_get_no_per_axis_state() {
    let long = 1usize << 40;
    let mut built = 0;
    for reg in registry_names() {
        let (lib, name) = resolve_optimizer(&reg).unwrap();
        // Stepped with an objective, not gradients: tests/closure.rs checks their shapes.
        if descent_core::closure::is_closure_optimizer(lib, &name) {
            continue;
        }
        for shapes in
            [vec![vec![0, long], vec![2, 2]], vec![vec![long, 0], vec![2, 2]], vec![vec![0, 1, 1, long], vec![4]]]
        {
            let h = hparams(lib, &name);
            let Ok(tx) = build_optimizer(lib, &name, &h, None, &shapes) else { continue };
            let mut params = vec![vec![], vec![0.5f32; 4]];
            let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
            let mut opt = match Optimizer::new(tx, shapes.clone(), &views) {
                Ok(o) => o,
                // Muon refuses tensors that are not matrices, by its library's rule.
                Err(e) => {
                    assert!(e.to_string().to_lowercase().contains("2"), "{reg} {shapes:?}: {e}");
                    continue;
                }
            };
            let grads = vec![vec![], vec![0.1f32, -0.2, 0.3, -0.4]];
            opt.step_vecs(&mut params, &grads).unwrap_or_else(|e| panic!("{reg} {shapes:?}: {e}"));
            opt.step_vecs(&mut params, &grads).unwrap_or_else(|e| panic!("{reg} {shapes:?}: {e}"));
            let bytes = opt.state_bytes().unwrap();
            assert!(bytes < 1 << 12, "{reg} {shapes:?}: {bytes} bytes of state");
            built += 1;
        }
    }
    assert!(built >= 150, "only {built} optimizers built");
}
