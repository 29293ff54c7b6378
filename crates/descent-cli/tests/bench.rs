//! `descent bench step`: the table, one JSON line per optimizer with the figures the README
//! names, and clear errors for bad settings.

mod common;

use common::{run_err, run_ok};

#[test]
fn bench_step_prints_a_row_and_a_json_line_per_optimizer() {
    let text =
        run_ok(&["bench", "step", "--optimizer", "adamw", "--params", "20000", "--tensors", "3", "--steps", "2"]);
    assert!(text.contains("of roofline"), "{text}");
    let lines: Vec<serde_json::Value> =
        text.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{text}");
    let r = &lines[0];
    assert!(r["optimizer"].as_str().unwrap().starts_with("torch.adamw"), "{r}");
    assert_eq!(r["tensors"], 3);
    assert_eq!(r["bytes_per_param"], 28.0);
    for key in ["ns_per_param", "params_per_s", "gb_per_s", "roofline_params_per_s", "fraction_of_roofline"] {
        let x = r[key].as_f64().unwrap_or(-1.0);
        assert!(x.is_finite() && x > 0.0, "{key} = {x}");
    }
}

#[test]
fn bench_step_refuses_bad_settings() {
    let e = run_err(&["bench", "step", "--optimizer", "adamw", "--params", "0"]);
    assert!(e.contains("--params"), "{e}");
    let e = run_err(&["bench", "step", "--optimizer", "adamw", "--params", "10", "--tensors", "11"]);
    assert!(e.contains("--tensors"), "{e}");
    let e = run_err(&["bench", "step", "--optimizer", "nosuch", "--params", "100"]);
    assert!(e.contains("nosuch"), "{e}");
}

#[test]
fn bench_train_gpt_in_tokens_and_lenet_with_augmentation() {
    let text = run_ok(&["bench", "train", "--model", "gpt", "--batches", "2", "--warmup", "1", "--threads", "2"]);
    let r: serde_json::Value = serde_json::from_str(text.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(
        (r["model"].as_str(), r["block_size"].as_u64(), r["batch_size"].as_u64()),
        (Some("gpt"), Some(64), Some(12))
    );
    assert_eq!(r["optimizer"], "torch.adamw");
    assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
    let text = run_ok(&[
        "bench",
        "train",
        "--model",
        "lenet",
        "--augment",
        "translate=2,rotate=10",
        "--batches",
        "2",
        "--warmup",
        "0",
    ]);
    assert!(text.contains("augment translate=2,rotate=10"), "{text}");
    let e = run_err(&["bench", "train", "--model", "gpt", "--augment", "rotate=5"]);
    assert!(e.contains("--augment"), "{e}");
    let e = run_err(&["bench", "train", "--model", "lenet", "--augment", "scale=2"]);
    assert!(e.contains("scale"), "{e}");
}

#[test]
fn train_augment_is_recorded_and_refused_where_it_does_not_apply() {
    let dir = common::out("augment");
    let d = dir.to_str().unwrap();
    let text = run_ok(&["train", "--model", "lenet", "--steps", "3", "--augment", "translate=2,rotate=10", "--out", d]);
    assert!(text.contains("epoch"), "{text}");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert!(cfg.contains("translate=2,rotate=10"), "{cfg}");
    let e = run_err(&["train", "--model", "gpt", "--steps", "2", "--augment", "rotate=5", "--out", d, "--force"]);
    assert!(e.contains("--augment: gpt reads text"), "{e}");
    let e = run_err(&["train", "--model", "linear", "--augment", "rotate=5", "--out", d, "--force"]);
    assert!(e.contains("--augment: the linear model"), "{e}");
    let e = run_err(&["train", "--model", "lenet", "--augment", "rotate=-5", "--out", d, "--force"]);
    assert!(e.contains("rotate=-5"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
