//! `--precision` of `descent train` and `descent bench train`: bf16 runs (where the CPU has
//! AVX-512 BF16, else refused in one line), a resumed run may change it, bad values are refused.

mod common;

use common::{one_line_error, out, run_err, run_ok};
use descent_train::precision::Precision;

#[test]
fn bad_precisions_are_refused_in_one_line() {
    one_line_error(
        &["train", "--model", "mlp", "--steps", "1", "--precision", "fp8"],
        &["--precision fp8", "f32, bf16"],
    );
    one_line_error(&["bench", "train", "--model", "mlp", "--precision", "f32,f16"], &["--precision f16"]);
    if !Precision::Bf16.is_fast() {
        one_line_error(&["train", "--model", "mlp", "--steps", "1", "--precision", "bf16"], &["AVX-512 BF16"]);
    }
}

#[test]
fn a_run_trains_in_bf16_and_resumes_in_f32() {
    if !Precision::Bf16.is_fast() {
        return;
    }
    let dir = out("precision");
    let d = dir.to_str().unwrap();
    run_ok(&["train", "--model", "mlp", "--steps", "4", "--precision", "bf16", "--out", d, "--threads", "1"]);
    let precision = || {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        v["precision"].as_str().unwrap().to_string()
    };
    assert_eq!(precision(), "bf16");
    // The master weights are f32: the run continues in the other precision.
    run_ok(&["train", "--resume", d, "--steps", "6", "--precision", "f32"]);
    assert_eq!(precision(), "f32");
    let e = run_err(&["train", "--resume", d, "--steps", "8", "--precision", "f16"]);
    assert!(e.contains("--precision f16"), "{e}");
}

#[test]
fn bench_train_alternates_precisions() {
    if !Precision::Bf16.is_fast() {
        return;
    }
    let text = run_ok(&[
        "bench",
        "train",
        "--model",
        "mlp",
        "--batches",
        "2",
        "--warmup",
        "1",
        "--precision",
        "f32,bf16",
        "--rounds",
        "2",
    ]);
    let rows: Vec<serde_json::Value> =
        text.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.iter().map(|r| r["precision"].as_str().unwrap()).collect::<Vec<_>>(), ["f32", "bf16"]);
    assert!(text.contains("alternating, best of 2 round(s) each: f32 "), "{text}");
    let text = run_ok(&["bench", "train", "--model", "gpt", "--batches", "1", "--warmup", "0", "--precision", "bf16"]);
    assert!(text.contains("bf16 products"), "{text}");
}

/// `evaluate` runs a bf16 run's model in bf16, as the run evaluated itself: the same test loss
/// as the run's last row (it was evaluated in f32, a slightly different number).
#[test]
fn evaluate_uses_the_runs_precision() {
    let dir = out("bf16-eval");
    let d = dir.to_str().unwrap();
    run_ok(&["train", "--model", "mlp", "--steps", "20", "--threads", "1", "--precision", "bf16", "--out", d]);
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let row: Vec<&str> = csv.lines().last().unwrap().split(',').collect();
    let run_loss: f64 = row[3].parse().unwrap();
    let text = run_ok(&["evaluate", d, "--threads", "1"]);
    let line = text.lines().find(|l| l.starts_with("test loss: ")).unwrap();
    assert_eq!(line, format!("test loss: {run_loss:.5}"), "{text}");
}
