//! PyTorch's forward and backward of the building blocks in shared/reference-nn-r2/layers, every
//! file of the folder, dispatched on its name's prefix (so another file of the same form is picked
//! up). Pass rule: each tensor `max|ours − ref| ≤ rel·max|ref| + abs`, 1e-4 and 1e-6 unless the file's
//! `tolerance` says otherwise for that field.

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use descent_train::model::Linear;
use descent_train::nn::{
    adaptive_avg_pool2d_1x1, avg_pool2d, batch_norm, embedding, embedding_with, gelu, layer_norm, log_softmax, softmax,
    AvgPool2d, BatchNormOptions, CausalSelfAttention, Divisor, EmbeddingOptions, Gelu, Rounding,
};
use serde_json::Value;

use common::{tensor, Check};

/// Model files whose models descent does not assemble yet (their layers are all covered above).
/// Must shrink to empty.
const MODELS_NOT_YET: &[&str] = &[];

/// Model files checked by another test file: (file name prefix, the test that reads them).
const MODELS_TESTED_IN: &[(&str, &str)] = &[("gpt", "tests/gpt.rs"), ("resnet", "tests/resnet.rs")];

fn dir() -> PathBuf {
    common::reference_nn_r2()
}

fn json_files(folder: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".json"))
        .collect();
    v.sort();
    v
}

fn indices(v: &Value) -> Tensor {
    let shape: Vec<usize> = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let data: Vec<i64> = v["data"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn var(v: &Value) -> Var {
    Var::from_tensor(&tensor(v)).unwrap()
}

/// The gradients of `sum(y · grad_output)`.
fn backward(y: &Tensor, c: &Value) -> candle_core::backprop::GradStore {
    (y * tensor(&c["grad_output"])).unwrap().sum_all().unwrap().backward().unwrap()
}

fn check_layer_norm(k: &mut Check) {
    known_args(k, &["normalized_shape", "eps"]);
    let c = k.case;
    let (x, w, b) = (var(&c["input"]), var(&c["weight"]), var(&c["bias"]));
    let shape = c["args"]["normalized_shape"].as_array().unwrap();
    assert_eq!(shape.len(), 1, "{}: normalization over the last dimension only", k.file);
    assert_eq!(shape[0].as_u64().unwrap() as usize, *x.dims().last().unwrap());
    let y = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), c["args"]["eps"].as_f64().unwrap()).unwrap();
    k.close("output", None, &y);
    let g = backward(&y, c);
    k.close("grad_input", None, g.get(x.as_tensor()).unwrap());
    k.close("grad_weight", None, g.get(w.as_tensor()).unwrap());
    k.close("grad_bias", None, g.get(b.as_tensor()).unwrap());
}

/// That a case's `args` hold only the arguments its check reads: one it would not read fails the
/// case by name rather than be ignored.
fn known_args(k: &Check, known: &[&str]) {
    if let Some(args) = k.case["args"].as_object() {
        for name in args.keys() {
            assert!(known.contains(&name.as_str()), "{}: argument `{name}` is not one this check reads", k.file);
        }
    }
}

fn check_embedding(k: &mut Check) {
    known_args(k, &["padding_idx", "scale_grad_by_freq"]);
    let c = k.case;
    let a = &c["args"];
    let w = var(&c["weight"]);
    let options = EmbeddingOptions {
        padding_idx: a["padding_idx"].as_i64(),
        scale_grad_by_freq: a["scale_grad_by_freq"].as_bool().unwrap_or(false),
    };
    let y = if options == EmbeddingOptions::default() {
        embedding(&indices(&c["indices"]), w.as_tensor()).unwrap()
    } else {
        embedding_with(&indices(&c["indices"]), w.as_tensor(), options).unwrap()
    };
    k.close("output", None, &y);
    let g = backward(&y, c);
    k.close("grad_weight", None, g.get(w.as_tensor()).unwrap());
}

/// GELU, softmax and log-softmax: `input` to `output`, `grad_input`.
fn check_pointwise(k: &mut Check, f: &dyn Fn(&Tensor) -> Tensor) {
    let c = k.case;
    let x = var(&c["input"]);
    let y = f(x.as_tensor());
    k.close("output", None, &y);
    let g = backward(&y, c);
    k.close("grad_input", None, g.get(x.as_tensor()).unwrap());
}

fn last_dim(k: &Check) {
    let d = k.case["args"]["dim"].as_i64().unwrap();
    let rank = k.case["input"]["shape"].as_array().unwrap().len() as i64;
    assert!(d == -1 || d == rank - 1, "{}: along dim {d}, descent's op is along the last", k.file);
}

fn check_batch_norm(k: &mut Check) {
    known_args(k, &["training", "momentum", "eps"]);
    let c = k.case;
    let a = &c["args"];
    let (x, w, b) = (var(&c["input"]), var(&c["weight"]), var(&c["bias"]));
    let (rm, rv) = (var(&c["running_mean"]), var(&c["running_var"]));
    let training = a["training"].as_bool().unwrap();
    let y = batch_norm(
        x.as_tensor(),
        &rm,
        &rv,
        w.as_tensor(),
        b.as_tensor(),
        BatchNormOptions { training, momentum: a["momentum"].as_f64().unwrap(), eps: a["eps"].as_f64().unwrap() },
    )
    .unwrap();
    k.close("output", None, &y);
    if training {
        k.close("running_mean_after", None, rm.as_tensor());
        k.close("running_var_after", None, rv.as_tensor());
    } else {
        // Evaluation leaves the running statistics as they were.
        k.close("running_mean", None, rm.as_tensor());
        k.close("running_var", None, rv.as_tensor());
    }
    let g = backward(&y, c);
    k.close("grad_input", None, g.get(x.as_tensor()).unwrap());
    k.close("grad_weight", None, g.get(w.as_tensor()).unwrap());
    k.close("grad_bias", None, g.get(b.as_tensor()).unwrap());
}

/// A pooling argument as torch takes it: one number for both dimensions or a pair; `None` when
/// absent, `null` or `[]` (torch's default).
fn pair(v: &Value) -> Option<(usize, usize)> {
    match v {
        Value::Number(n) => Some((n.as_u64().unwrap() as usize, n.as_u64().unwrap() as usize)),
        Value::Array(a) if a.len() == 2 => Some((a[0].as_u64().unwrap() as usize, a[1].as_u64().unwrap() as usize)),
        Value::Array(a) if a.len() == 1 => pair(&a[0]),
        Value::Array(a) if a.is_empty() => None,
        Value::Null => None,
        other => panic!("a pooling size {other}"),
    }
}

fn check_avg_pool(k: &mut Check) {
    known_args(k, &["kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"]);
    let a = &k.case["args"];
    let kernel = pair(&a["kernel_size"]).expect("kernel_size");
    let pool = AvgPool2d {
        kernel,
        stride: pair(&a["stride"]).unwrap_or(kernel),
        padding: pair(&a["padding"]).unwrap_or((0, 0)),
        rounding: if a["ceil_mode"].as_bool().unwrap_or(false) { Rounding::Ceil } else { Rounding::Floor },
        divisor: match (a["divisor_override"].as_u64(), a["count_include_pad"].as_bool().unwrap_or(true)) {
            (Some(d), _) => Divisor::Fixed(d as usize),
            (None, true) => Divisor::Window,
            (None, false) => Divisor::InputCells,
        },
    };
    if pool.stride == pool.kernel && pool.padding == (0, 0) && pool.rounding == Rounding::Floor && kernel.0 == kernel.1
    {
        // The square, unpadded pooling's function gives the same.
        check_pointwise(k, &|x| avg_pool2d(x, kernel.0, kernel.0).unwrap());
    }
    check_pointwise(k, &|x| pool.forward(x).unwrap());
}

fn check_adaptive_avg_pool(k: &mut Check) {
    known_args(k, &["output_size"]);
    let size: Vec<u64> =
        k.case["args"]["output_size"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(size, [1, 1], "{}: global pooling only", k.file);
    check_pointwise(k, &|x| adaptive_avg_pool2d_1x1(x).unwrap());
}

fn check_attention(k: &mut Check) {
    known_args(k, &["n_head", "dropout"]);
    let c = k.case;
    let p = |n: &str| var(&c["params"][n]);
    let layer = CausalSelfAttention {
        c_attn: Linear { weight: p("c_attn.weight"), bias: p("c_attn.bias") },
        c_proj: Linear { weight: p("c_proj.weight"), bias: p("c_proj.bias") },
        n_head: c["args"]["n_head"].as_u64().unwrap() as usize,
    };
    assert_eq!(c["args"]["dropout"].as_f64().unwrap_or(0.0), 0.0, "{}: no dropout", k.file);
    let x = var(&c["input"]);
    let (y, att) = layer.forward_with_weights(x.as_tensor()).unwrap();
    k.close("output", None, &y);
    k.close("att", None, &att);
    let g = backward(&y, c);
    k.close("grad_input", None, g.get(x.as_tensor()).unwrap());
    for (name, v) in [
        ("c_attn.weight", &layer.c_attn.weight),
        ("c_attn.bias", &layer.c_attn.bias),
        ("c_proj.weight", &layer.c_proj.weight),
        ("c_proj.bias", &layer.c_proj.bias),
    ] {
        k.close("grads", Some(name), g.get(v.as_tensor()).unwrap());
    }
    assert_eq!(c["grads"].as_object().unwrap().len(), 4, "{}: a gradient this test does not check", k.file);
    // The layer without the weights' copy gives the same output.
    let plain = layer.forward(x.as_tensor()).unwrap();
    k.close("output", None, &plain);
}

#[test]
fn every_layer_file_matches_pytorch() {
    check_layer_files(&dir().join("layers"));
}

/// The project's own recordings of the same form (`scripts/layer_cases/`): arguments the shared
/// files keep fixed (average pooling's windows, padding, ceil mode, divisors).
#[test]
fn the_projects_layer_cases_match_pytorch() {
    check_layer_files(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cases/layers"));
}

fn check_layer_files(folder: &std::path::Path) {
    let files = json_files(folder);
    assert!(!files.is_empty(), "no layer files in {}", folder.display());
    let mut failures = vec![];
    for f in &files {
        let case: Value = serde_json::from_str(&std::fs::read_to_string(folder.join(f)).unwrap()).unwrap();
        let mut k = Check::new(f, &case);
        let kind = f.split('.').next().unwrap();
        match kind {
            "layer_norm" => check_layer_norm(&mut k),
            "embedding" => check_embedding(&mut k),
            "gelu" => {
                known_args(&k, &["approximate"]);
                let which = match case["args"]["approximate"].as_str().unwrap_or("none") {
                    "none" => Gelu::Erf,
                    "tanh" => Gelu::Tanh,
                    other => panic!("{f}: unknown GELU approximation {other}"),
                };
                check_pointwise(&mut k, &|x| gelu(x, which).unwrap())
            }
            "softmax" => {
                known_args(&k, &["dim"]);
                last_dim(&k);
                check_pointwise(&mut k, &|x| softmax(x).unwrap())
            }
            "log_softmax" => {
                known_args(&k, &["dim"]);
                last_dim(&k);
                check_pointwise(&mut k, &|x| log_softmax(x).unwrap())
            }
            "causal_self_attention" => check_attention(&mut k),
            "batch_norm1d" | "batch_norm2d" => check_batch_norm(&mut k),
            "adaptive_avg_pool2d" => check_adaptive_avg_pool(&mut k),
            "avg_pool2d" => check_avg_pool(&mut k),
            other => panic!("{f}: no check for layer `{other}`"),
        }
        failures.extend(k.failures.into_iter().map(|e| format!("{f} {e}")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_model_file_is_covered_or_listed() {
    for f in json_files(&dir().join("models")) {
        let stem = f.split('.').next().unwrap();
        let tested = MODELS_TESTED_IN.iter().find(|(prefix, _)| stem.starts_with(prefix));
        if let Some((_, test)) = tested {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(test);
            assert!(path.is_file(), "model reference {f} is to be tested by {test}, which does not exist");
        }
        assert!(
            tested.is_some() || MODELS_NOT_YET.contains(&stem),
            "model reference {f} is neither tested nor listed as not yet covered"
        );
    }
}

/// Dropout from the seeded generator: the same seed gives the same mask, kept values are scaled by
/// 1/(1 − p), evaluation passes the input through.
#[test]
fn dropout_is_seeded_and_inverted() {
    use descent_train::model::Mode;
    use descent_train::nn::Dropout;
    use descent_train::rng::Rng;
    let x = Tensor::ones((64, 32), DType::F32, &Device::Cpu).unwrap();
    let d = Dropout::new(0.25).unwrap();
    let a = d.forward(&x, Mode::Train, &mut Rng::new(5)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = d.forward(&x, Mode::Train, &mut Rng::new(5)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a, b);
    assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
    assert!((dropped - 0.25).abs() < 0.05, "dropped {dropped}");
    let e = d.forward(&x, Mode::Eval, &mut Rng::new(5)).unwrap();
    assert_eq!(e.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1.0; 64 * 32]);
    assert!(Dropout::new(1.5).is_err() && Dropout::new(-0.1).is_err());
}

/// Log-softmax of logits far from zero (1e4, −3e4) against its float64 value, forward and
/// backward, under the reference pass rule: `x − (m + ln Σ)` rounds at the size of the maximum and
/// the gradient carried that error (6× the tolerance at −3e4).
#[test]
fn log_softmax_keeps_its_digits_far_from_zero() {
    let rows: [[f32; 4]; 3] =
        [[1e4, 1e4 + 0.7, 1e4 - 1.3, 1e4 + 0.2], [-3e4, -3e4 + 1.0, -3e4 + 2.0, -3e4 + 0.5], [3.0, -1.0, 0.25, 2.0]];
    let g: [f32; 4] = [0.3, -1.2, 0.8, 0.5];
    let x = Var::from_vec(rows.iter().flatten().copied().collect::<Vec<f32>>(), (3, 4), &Device::Cpu).unwrap();
    let up = Tensor::from_vec(g.repeat(3), (3, 4), &Device::Cpu).unwrap();
    let y = log_softmax(x.as_tensor()).unwrap();
    let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
    let ours = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let ours_grad = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (mut exact, mut exact_grad) = (vec![], vec![]);
    for r in &rows {
        let m = r.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let ls = r.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        let lsm: Vec<f64> = r.iter().map(|&v| v as f64 - m - ls).collect();
        let s: f64 = g.iter().map(|&v| v as f64).sum();
        exact_grad.extend(lsm.iter().zip(&g).map(|(l, &gi)| gi as f64 - l.exp() * s));
        exact.extend(lsm);
    }
    for (what, a, b) in [("output", &ours, &exact), ("grad_input", &ours_grad, &exact_grad)] {
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(b).map(|(&x, &e)| (x as f64 - e).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-4 * scale + 1e-6, "{what}: off by {worst:e}, bound {:e}", 1e-4 * scale + 1e-6);
    }
}
