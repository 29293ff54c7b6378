//! `descent train` as a user runs it.

use std::process::Command;

fn descent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_descent"));
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    c
}

#[test]
fn linear_regression_prints_the_learned_slope() {
    let out = descent()
        .args(["train", "--model", "linear", "--optimizer", "sgd", "--epochs", "3", "--threads", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.lines().filter(|l| l.starts_with("epoch ")).count(), 3, "{text}");
    let last = text.lines().last().unwrap();
    let w: f32 = last.split("weight = ").nth(1).unwrap().trim_end_matches(')').parse().unwrap();
    assert!((w - 2.0).abs() < 0.05, "{last}");
}

#[test]
fn mlp_reports_test_accuracy() {
    let out = descent().args(["train", "--model", "mlp", "--steps", "200", "--threads", "2"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let acc: f64 =
        text.lines().last().unwrap().trim_start_matches("test accuracy: ").trim_end_matches('%').parse().unwrap();
    assert!(acc > 85.0, "{text}");
}

#[test]
fn bad_flags_are_errors_that_list_the_valid_choices() {
    for (args, needles) in [
        (vec!["train", "--model", "resnet"], vec!["resnet", "lenet", "mlp", "linear"]),
        (vec!["train", "--optimizer", "adamz"], vec!["adamz", "torch.adam"]),
        (vec!["train", "--init", "ones"], vec!["ones", "xavier_uniform"]),
        (vec!["train", "--hparams", "{momentum"], vec!["hparams", "JSON"]),
        (vec!["train", "--model", "mlp", "--data", "no/such/dir"], vec!["no/such/dir", "missing"]),
    ] {
        let out = descent().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for n in needles {
            assert!(err.contains(n), "{args:?}: {err}");
        }
    }
}
