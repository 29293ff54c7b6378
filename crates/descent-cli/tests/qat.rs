//! `descent train --qat`: quantization-aware training resumes bit for bit, `descent quantize`
//! takes its observers' ranges, and the int8 model predicts as the QAT model did.

mod common;

use candle_core::{Device, Tensor};
use common::{csv_rows, one_line_error, out, run_ok, s};
use descent_train::checkpoint::Checkpoint;
use descent_train::model::{Init, Mlp, Mode, Model};
use descent_train::qat::QatModel;
use descent_train::quant::QuantModel;
use descent_train::rng::Rng;

/// The percentage of the last line starting with `prefix`.
fn accuracy(text: &str, prefix: &str) -> f64 {
    let line = text.lines().rev().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` in {text}"));
    line[prefix.len()..].trim().trim_end_matches('%').parse().unwrap()
}

fn predictions(model: &dyn Model, x: &Tensor) -> Vec<u32> {
    let logits = model.forward(x, Mode::Eval, &mut Rng::new(0)).unwrap();
    logits.argmax(1).unwrap().to_vec1::<u32>().unwrap()
}

#[test]
fn qat_resumes_exactly_and_its_int8_model_predicts_as_it_did() {
    let (full, cut, q, ptq, plain) = (out("qat-full"), out("qat-cut"), out("qat-q"), out("qat-ptq"), out("qat-plain"));
    let base = ["train", "--model", "mlp", "--qat", "--threads", "2", "--seed", "1"];
    let text = run_ok(&[&base[..], &["--steps", "400", "--out", s(&full)]].concat());
    assert!(text.contains("quantization-aware training"), "{text}");
    let qat_acc = accuracy(&text, "test accuracy:");
    assert!(qat_acc > 85.0, "{text}");

    // Cut inside the epoch and resumed: the uninterrupted run's steps, weights and observers.
    run_ok(&[&base[..], &["--steps", "150", "--out", s(&cut)]].concat());
    let text = run_ok(&["train", "--resume", s(&cut), "--steps", "400", "--threads", "2"]);
    assert_eq!(accuracy(&text, "test accuracy:"), qat_acc, "{text}");
    let losses =
        |d: &std::path::Path| -> Vec<String> { csv_rows(&d.join("steps.csv")).iter().map(|r| r[2].clone()).collect() };
    assert_eq!(losses(&full), losses(&cut));
    let (ck_full, ck_cut) = (
        Checkpoint::load(&full.join("checkpoint.safetensors")).unwrap(),
        Checkpoint::load(&cut.join("checkpoint.safetensors")).unwrap(),
    );
    assert_eq!(ck_full.weights, ck_cut.weights);
    assert_eq!(ck_full.buffers, ck_cut.buffers);
    assert_eq!(ck_full.buffers.len(), 4, "two observers of two values");

    // Quantized with the observers' ranges (the default for a QAT run): what the QAT model
    // computed, so the same accuracy to a small tolerance, and `descent evaluate` agrees.
    let text = run_ok(&["quantize", s(&full), "--out", s(&q)]);
    assert!(text.contains("observers"), "{text}");
    let (qat_again, int8_acc) =
        (accuracy(&text, "QAT model (fake-quantized f32) test accuracy:"), accuracy(&text, "test accuracy:"));
    assert_eq!(qat_again, qat_acc, "{text}");
    println!("QAT {qat_acc:.2}%, its int8 model {int8_acc:.2}%");
    assert!((int8_acc - qat_acc).abs() <= 0.1, "{text}");
    let text = run_ok(&["evaluate", s(&q)]);
    assert!(text.contains("int8"), "{text}");
    assert_eq!(accuracy(&text, "test accuracy:"), int8_acc, "{text}");
    let text = run_ok(&["evaluate", s(&full)]);
    assert_eq!(accuracy(&text, "test accuracy:"), qat_acc, "{text}");

    // Sample by sample: the int8 model's predictions are the QAT model's on nearly every test image.
    let m = descent_train::mnist::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist")))
        .unwrap();
    let test = descent_train::data::Dataset::mnist(&m.test, false).unwrap();
    let qat =
        QatModel::new("mlp", Box::new(Mlp::new(Init::TorchDefault, 0.2, &mut Rng::new(0), &Device::Cpu).unwrap()), 0.2)
            .unwrap();
    ck_full.apply_weights(&qat).unwrap();
    let int8 = QuantModel::load(&q.join("model.int8.safetensors")).unwrap();
    let (pa, pb) = (predictions(&qat, &test.x), predictions(&int8, &test.x));
    let same = pa.iter().zip(&pb).filter(|(a, b)| a == b).count();
    println!("int8 and QAT predictions agree on {same} of {} test images", pa.len());
    assert!(same as f64 >= 0.995 * pa.len() as f64, "{same} of {}", pa.len());

    // A fresh calibration on request, said so.
    let text = run_ok(&["quantize", s(&full), "--out", s(&ptq), "--calibration", "minmax"]);
    assert!(text.contains("minmax over 10 batches") && text.contains("not the QAT run's observers"), "{text}");

    // Refusals, one line each.
    for model in ["gpt", "resnet", "linear", "plain"] {
        one_line_error(&["train", "--model", model, "--qat", "--out", "/tmp/descent-qat-x"], &["--qat", "mlp, lenet"]);
    }
    one_line_error(
        &["train", "--model", "mlp", "--qat", "--ema", "0.99", "--out", "/tmp/descent-qat-x"],
        &["--qat", "--ema"],
    );
    one_line_error(
        &["quantize", s(&full), "--out", "/tmp/descent-qat-x", "--calibration-batches", "4"],
        &["--calibration-batches 4", "observers"],
    );
    one_line_error(&["train", "--resume", s(&q)], &["int8"]);
    run_ok(&["train", "--model", "mlp", "--steps", "20", "--threads", "2", "--out", s(&plain)]);
    one_line_error(
        &["quantize", s(&plain), "--out", "/tmp/descent-qat-x", "--calibration", "observers"],
        &["--calibration observers", "--qat"],
    );
    one_line_error(&["train", "--resume", s(&plain), "--steps", "40", "--qat"], &["--qat", "contradicts"]);
    assert!(!std::path::Path::new("/tmp/descent-qat-x").exists());
    for d in [full, cut, q, ptq, plain] {
        std::fs::remove_dir_all(d).ok();
    }
}
