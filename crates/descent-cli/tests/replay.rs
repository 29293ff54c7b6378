//! `descent replay` as a user runs it.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn descent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_descent"))
}

fn reference() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference")
}

#[test]
fn replay_prints_the_trajectory_in_the_layout_of_expected() {
    let file = reference().join("optim/torch.adamw.default.json");
    let out = descent().arg("replay").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let case: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(got["id"], "torch.adamw.default");
    let (p, e) = (got["params"].as_array().unwrap(), case["expected"].as_array().unwrap());
    assert_eq!(p.len(), e.len());
    for (ps, es) in p.iter().zip(e) {
        let (ps, es) = (ps.as_array().unwrap(), es.as_array().unwrap());
        assert_eq!(ps.len(), es.len());
        for (a, b) in ps.iter().zip(es) {
            assert_eq!(a.as_array().unwrap().len(), b.as_array().unwrap().len());
        }
    }
}

#[test]
fn replay_of_a_schedule_prints_lr() {
    let out = descent().arg("replay").arg(reference().join("schedules/torch.step_lr.json")).output().unwrap();
    assert!(out.status.success());
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lr = got["lr"].as_array().unwrap();
    assert_eq!(lr.len(), 100);
    assert!((lr[0].as_f64().unwrap() - 0.1).abs() < 1e-12 && (lr[10].as_f64().unwrap() - 0.05).abs() < 1e-12);
}

#[test]
fn check_prints_a_line_per_case_and_the_summary() {
    let dir = common::out("check");
    std::fs::create_dir_all(&dir).unwrap();
    let good = reference().join("optim/torch.sgd.nesterov.json");
    std::fs::copy(&good, dir.join("good.json")).unwrap();
    // A case whose expected trajectory was tampered with must fail.
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&good).unwrap()).unwrap();
    v["expected"][3][0][0] = serde_json::json!(v["expected"][3][0][0].as_f64().unwrap() + 0.5);
    v["id"] = serde_json::json!("torch.sgd.tampered");
    std::fs::write(dir.join("tampered.json"), v.to_string()).unwrap();
    std::fs::write(dir.join("broken.json"), "{\"id\": ").unwrap();

    let out = descent().args(["replay", "--check"]).arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a failing case must fail the command");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines.iter().any(|l| l.starts_with("PASS torch.sgd.nesterov")), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("FAIL torch.sgd.tampered") && l.contains("step 3")), "{text}");
    assert!(
        lines.iter().any(|l| l.starts_with("FAIL") && l.contains("broken.json") && l.contains("malformed JSON")),
        "{text}"
    );
    assert_eq!(lines[3], "1 passed, 2 failed");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_paths_are_an_error_naming_them() {
    let out = descent().args(["replay", "--check", "no/such/dir"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/dir"));
}

/// A folder without case files is an error naming it, not "0 passed, 0 failed".
#[test]
fn a_folder_without_cases_is_an_error() {
    let dir = common::out("replay-empty");
    std::fs::create_dir_all(&dir).unwrap();
    let out = descent().args(["replay", "--check"]).arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("no case files") && err.contains(&*dir.to_string_lossy()), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A case in a file named otherwise than its id, or whose id another file holds too, is reported
/// with its file: a copy under another name does not pass as another case.
#[test]
fn a_case_in_two_files_is_named_by_its_files() {
    let dir = common::out("replay-twice");
    std::fs::create_dir_all(&dir).unwrap();
    let case = reference().join("optim/torch.sgd.maximize.json");
    std::fs::copy(&case, dir.join("torch.sgd.maximize.json")).unwrap();
    std::fs::copy(&case, dir.join("torch.adam.renamed.json")).unwrap();
    let out = descent().args(["replay", "--check"]).arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("PASS torch.sgd.maximize [") && lines[0].contains("torch.adam.renamed.json]"),
        "{text}"
    );
    assert!(
        lines[1].contains("torch.sgd.maximize.json; the id of") && lines[1].contains("renamed.json too]"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Hostile case folders: a named pipe and a link to an endless device are refused as files that
/// are not regular (instead of blocking or filling memory), an `id` whose library contradicts its
/// `source` and a Newton–Schulz count that would run for hours are refused by name, an exact
/// match passes a zero tolerance, and the other cases still run.
#[cfg(unix)]
#[test]
fn hostile_case_files_fail_by_name_and_the_rest_still_run() {
    let dir = common::out("replay-hostile");
    std::fs::create_dir_all(&dir).unwrap();
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(reference().join(name)).unwrap()).unwrap()
    };
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.json")).unwrap();
    assert!(Command::new("mkfifo").arg(dir.join("pipe.json")).status().unwrap().success());
    // No gradient, so no move: matched exactly.
    let mut exact = read("optim/torch.sgd.plain.json");
    exact["tolerance"] = serde_json::json!({"rel": 0.0, "abs": 0.0});
    let init: Vec<serde_json::Value> = exact["params"].as_array().unwrap().iter().map(|p| p["init"].clone()).collect();
    let steps = exact["grads"].as_array().unwrap().len();
    let zeros: Vec<serde_json::Value> =
        init.iter().map(|v| serde_json::Value::from(vec![0.0; v.as_array().unwrap().len()])).collect();
    exact["grads"] = serde_json::Value::from(vec![serde_json::Value::from(zeros); steps]);
    exact["expected"] = serde_json::Value::from(vec![serde_json::Value::from(init); steps]);
    let mut lion = read("optim/optax.lion.json");
    lion["id"] = "torch.lion.x".into();
    let mut muon = read("optim/optax.contrib.muon.json");
    muon["hparams"]["ns_steps"] = 1_000_000_000u64.into();
    let mut null = read("optim/torch.adam.default.json");
    null["hparams"] = serde_json::Value::Null;
    let mut step = read("schedules/torch.step_lr.json");
    step["metrics"] = serde_json::Value::from(vec![1.0; 100]);
    for (name, v) in
        [("exact.json", &exact), ("lion.json", &lion), ("muon.json", &muon), ("null.json", &null), ("step.json", &step)]
    {
        std::fs::write(dir.join(name), v.to_string()).unwrap();
    }
    let out = descent().args(["replay", "--check"]).arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    for (file, why) in [
        ("zero.json", "not a regular file"),
        ("pipe.json", "not a regular file"),
        ("lion.json", "field `source`"),
        ("muon.json", "ns_steps 1000000000"),
        ("null.json", "field `hparams`"),
        ("step.json", "only ReduceLROnPlateau"),
    ] {
        assert!(text.lines().any(|l| l.starts_with("FAIL") && l.contains(file) && l.contains(why)), "{file}: {text}");
    }
    assert!(text.contains("PASS torch.sgd.plain") && text.contains("1 passed, 6 failed"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Standard output that cannot be written (a full disk) is a one-line error and a failed exit,
/// not a crash with a backtrace.
#[cfg(target_os = "linux")]
#[test]
fn a_full_standard_output_is_a_one_line_error() {
    let out = descent()
        .args(["list"])
        .env("RUST_BACKTRACE", "1")
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error: writing to standard output") && err.lines().count() == 1, "{err}");
}

/// What JSON numbers cannot hold is printed as the project writes it elsewhere: "inf", "NaN".
#[test]
fn replay_prints_non_finite_values_as_strings_not_null() {
    let dir = common::out("replay-nonfinite");
    let file = dir.join("optax.wcd_exp_neg.json");
    let case = serde_json::json!({
        "id": "optax.wcd_exp_neg", "source": "optax 0.2.8", "schedule": "warmup_cosine_decay_schedule",
        "kwargs": {"init_value": 0.0, "peak_value": 0.1, "warmup_steps": 5, "decay_steps": 15, "exponent": -1.0},
        "steps": 16, "expected_lr": vec![0.0; 16]
    });
    std::fs::create_dir_all(&*dir).unwrap();
    std::fs::write(&file, case.to_string()).unwrap();
    let out = descent().arg("replay").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lr = got["lr"].as_array().unwrap();
    assert_eq!(lr.len(), 16);
    assert_eq!(lr[15], "inf", "{got}");
    assert!(lr.iter().all(|x| !x.is_null()), "{got}");
}
