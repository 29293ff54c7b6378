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

/// Runs `lib.name` for six steps on `shapes`, once straight through and once saved (through
/// JSON), rebuilt and loaded after step 3; asserts that both end bit for bit the same and returns
/// the uninterrupted optimizer.
fn assert_resume_is_exact(lib: &str, name: &str, h: &serde_json::Value, shapes: &[Vec<usize>]) -> Optimizer {
    use descent_core::state::StateDict;
    let build = || {
        let tx = build_optimizer(lib, name, h, None, shapes).unwrap();
        let p: Vec<Vec<f32>> = shapes
            .iter()
            .map(|s| (0..s.iter().product::<usize>()).map(|i| (i as f32 * 0.01).sin()).collect())
            .collect();
        let views: Vec<&[f32]> = p.iter().map(|v| v.as_slice()).collect();
        (Optimizer::new(tx, shapes.to_vec(), &views).unwrap(), p)
    };
    let grads = |t: usize| -> Vec<Vec<f32>> {
        shapes
            .iter()
            .map(|s| (0..s.iter().product::<usize>()).map(|i| ((i * 7 + t * 13) as f32 * 0.37).cos()).collect())
            .collect()
    };
    let (mut opt, mut p) = build();
    let (mut opt2, mut p2) = build();
    for t in 0..6 {
        if t == 3 {
            let text = opt2.state_dict().unwrap().to_json().unwrap();
            let (fresh, _) = build();
            opt2 = fresh;
            opt2.load_state_dict(&StateDict::from_json(&text).unwrap()).unwrap();
        }
        opt.step_vecs(&mut p, &grads(t)).unwrap();
        opt2.step_vecs(&mut p2, &grads(t)).unwrap();
    }
    for (a, b) in p.iter().flatten().zip(p2.iter().flatten()) {
        assert_eq!(a.to_bits(), b.to_bits(), "{lib}.{name}: resumed run differs");
    }
    opt
}

/// 8-bit AdamW: one byte per moment plus one f32 scale per 2048 elements for large tensors,
/// 32-bit moments for small ones; its state saves and resumes bit for bit.
#[test]
fn adamw8bit_state_is_a_quarter_and_resumes_exactly() {
    let shapes = vec![vec![512, 64], vec![64]];
    let mut opt = assert_resume_is_exact("descent", "adamw8bit", &json!({"lr": 1e-2}), &shapes);
    let big: usize = 512 * 64;
    assert_eq!(opt.stored_state_bytes(), 2 * big + 2 * 4 * big.div_ceil(2048) + 2 * 4 * 64);
    // A saved state whose byte buffers hold non-bytes is refused.
    let mut bad = opt.state_dict().unwrap();
    let key = bad.buffers.keys().find(|k| k.contains(".m_code.")).unwrap().clone();
    bad.buffers.get_mut(&key).unwrap()[0] = 300.0;
    assert!(opt.load_state_dict(&bad).unwrap_err().to_string().contains("not bytes"));
    // Codes of an earlier format (saved as `m` and `v`) are refused, not decoded the new way.
    let mut old = opt.state_dict().unwrap();
    old.buffers = old
        .buffers
        .into_iter()
        .map(|(k, b)| (k.replace(".m_code.", ".m.").replace(".sqrt_v_code.", ".v."), b))
        .collect();
    let err = opt.load_state_dict(&old).unwrap_err().to_string();
    assert!(err.contains("missing buffer") && err.contains("m_code"), "{err}");
}

/// optax's `mu_dtype: bfloat16`: the first moment in 2 bytes (6 bytes of Adam state per
/// parameter instead of 8), computed in f32 and rounded on store like optax's `tree_cast`; the
/// state saves and resumes bit for bit, and a saved moment that is not bfloat16 is refused.
#[test]
fn bf16_first_moment_takes_two_bytes_and_resumes_exactly() {
    let shapes = vec![vec![300, 7], vec![7]];
    let n: usize = 300 * 7 + 7;
    let h = json!({"learning_rate": 1e-2, "mu_dtype": "bfloat16"});
    let mut opt = assert_resume_is_exact("optax", "adamw", &h, &shapes);
    assert_eq!(opt.stored_state_bytes(), 6 * n);
    let mut bad = opt.state_dict().unwrap();
    let key = bad.buffers.keys().find(|k| k.contains("mu_bf16.")).unwrap().clone();
    assert!(bad.buffers[&key].iter().any(|&x| x != 0.0), "the moment was stored");
    bad.buffers.get_mut(&key).unwrap()[0] = 0.1;
    assert!(opt.load_state_dict(&bad).unwrap_err().to_string().contains("not bfloat16"));
}

/// The bfloat16 moment follows f32 Adam closely: after 50 steps the parameters differ by a small
/// fraction of how far they moved.
#[test]
fn bf16_first_moment_tracks_f32_adam() {
    let shapes = vec![vec![2000]];
    let run = |mu: &str| {
        let h = json!({"learning_rate": 1e-2, "mu_dtype": mu});
        let tx = build_optimizer("optax", "adam", &h, None, &shapes).unwrap();
        let mut p = vec![(0..2000).map(|i| (i as f32 * 0.01).sin()).collect::<Vec<f32>>()];
        let views: Vec<&[f32]> = p.iter().map(|v| v.as_slice()).collect();
        let mut opt = Optimizer::new(tx, shapes.clone(), &views).unwrap();
        for t in 0..50 {
            // The gradient of ½‖p − c‖² plus a deterministic perturbation.
            let g: Vec<f32> =
                p[0].iter().enumerate().map(|(i, x)| x - 0.3 + 0.1 * ((i * 31 + t * 17) as f32).sin()).collect();
            opt.step_vecs(&mut p, &[g]).unwrap();
        }
        p.remove(0)
    };
    let (a, b) = (run("float32"), run("bfloat16"));
    let start: Vec<f32> = (0..2000).map(|i| (i as f32 * 0.01).sin()).collect();
    let moved: f32 = a.iter().zip(&start).map(|(x, s)| (x - s).abs()).sum();
    let diff: f32 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum();
    assert!(diff > 0.0, "bfloat16 storage changed nothing");
    assert!(diff < 0.01 * moved, "bf16 deviates by {diff} for a total move of {moved}");
}
