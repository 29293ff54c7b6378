//! State memory per parameter, as documented in the README: what each optimizer keeps beside the
//! parameters (f32 state).

use descent_core::spec::{build_optimizer, lr_key, resolve_optimizer};
use descent_core::Optimizer;
use serde_json::json;

fn bytes_per_param(name: &str, extra: serde_json::Value, shapes: &[Vec<usize>]) -> f64 {
    let (lib, n) = resolve_optimizer(name).unwrap();
    let mut h = extra;
    if h.get(lr_key(lib)).is_none() {
        h[lr_key(lib)] = json!(0.01);
    }
    let params: Vec<Vec<f32>> = shapes.iter().map(|s| vec![0.5; s.iter().product()]).collect();
    let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
    let tx = build_optimizer(lib, &n, &h, None, shapes).unwrap();
    let mut opt = Optimizer::new(tx, shapes.to_vec(), &views).unwrap();
    let total: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    opt.state_bytes().unwrap() as f64 / total as f64
}

#[test]
fn state_bytes_per_parameter() {
    let flat = [vec![10_000]];
    for (name, extra, expected) in [
        ("torch.sgd", json!({}), 0.0),
        ("torch.sgd", json!({"momentum": 0.9}), 4.0),
        ("torch.adam", json!({}), 8.0),
        ("torch.adamw", json!({"amsgrad": true}), 12.0),
        ("torch.adagrad", json!({}), 4.0),
        ("torch.rmsprop", json!({}), 4.0),
        ("torch.rmsprop", json!({"centered": true, "momentum": 0.9}), 12.0),
        ("torch.adadelta", json!({}), 8.0),
        ("torch.nadam", json!({}), 8.0),
        ("torch.radam", json!({}), 8.0),
        ("torch.rprop", json!({}), 8.0),
        ("lion", json!({}), 4.0),
        ("adan", json!({}), 16.0),
        ("sign_sgd", json!({}), 0.0),
        ("signum", json!({}), 4.0),
        ("schedule_free_adamw", json!({}), 8.0),
        ("prodigy", json!({}), 16.0),
    ] {
        let got = bytes_per_param(name, extra.clone(), &flat);
        assert_eq!(got, expected, "{name} {extra}");
    }
}

#[test]
fn adafactor_state_is_sub_linear_for_matrices() {
    // A 1024 x 512 matrix: row and column moments, (1024 + 512) floats for 524 288 parameters.
    let m = [vec![1024, 512]];
    let torch = bytes_per_param("torch.adafactor", json!({}), &m);
    assert!((torch - 4.0 * 1536.0 / 524_288.0).abs() < 1e-12, "{torch}");
    let optax = bytes_per_param("optax.adafactor", json!({}), &m);
    assert!(optax < 0.02, "{optax}");
    // Vectors keep a full second moment.
    assert_eq!(bytes_per_param("torch.adafactor", json!({}), &[vec![1000]]), 4.0);
}
