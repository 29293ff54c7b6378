//! After training: `descent evaluate`, weight averaging (`train --ema`, `--swa-start`),
//! `descent ensemble` and `descent distill`, on tiny runs (a few dozen steps, 500 held-out
//! samples as the evaluation set).

mod common;

use common::{one_line_error, out, run_err, run_ok, s};
use std::path::Path;

/// A tiny MLP run: `steps` steps of 64 samples, evaluated on 500 held-out samples.
fn tiny(dir: &Path, steps: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "train",
        "--model",
        "mlp",
        "--steps",
        steps,
        "--batch-size",
        "64",
        "--validation",
        "500",
        "--threads",
        "1",
        "--out",
        s(dir),
    ];
    args.extend_from_slice(extra);
    run_ok(&args)
}

/// `descent distill`: an MLP student of 16 hidden units from `teacher`, `steps` steps as [`tiny`].
fn small_student(teacher: &Path, student: &Path, steps: &str) -> String {
    let (t, out) = (s(teacher), s(student));
    #[rustfmt::skip]
    let args = ["distill", "--teacher", t, "--student", "mlp", "--hidden", "16", "--steps", steps, "--batch-size", "64",
        "--validation", "500", "--threads", "1", "--out", out];
    run_ok(&args)
}

fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or("")
}

fn line_with<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no `{start}` line in {text}"))
}

/// `descent evaluate` ends with the line `train` ended with (the same accuracy, recomputed from
/// the checkpoint); `--weights ema` gives the EMA's, which metrics.jsonl records per epoch.
#[test]
fn evaluate_reproduces_train_and_the_ema() {
    let dir = out("evaluate");
    let trained = tiny(&dir, "40", &["--ema", "0.9", "--ema-warmup"]);
    assert!(last_line(&trained).starts_with("validation accuracy: "), "{trained}");
    let evaluated = run_ok(&["evaluate", s(&dir), "--threads", "1"]);
    assert_eq!(last_line(&evaluated), last_line(&trained), "{evaluated}");
    let ema = run_ok(&["evaluate", s(&dir), "--weights", "ema", "--threads", "1"]);
    let ema_line = line_with(&trained, "ema validation accuracy: ");
    assert!(ema_line.starts_with(&format!("ema {}", last_line(&ema))), "{ema_line} vs {ema}");
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let row: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert!(row["ema_test_accuracy"].as_f64().is_some() && row["ema_test_loss"].as_f64().is_some(), "{row}");
    // metrics.csv mirrors every field of the record, the EMA's too.
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let at = |name: &str| header.iter().position(|c| *c == name).unwrap_or_else(|| panic!("no {name} column"));
    let csv = common::csv_rows(&dir.join("metrics.csv"));
    let last = csv.last().unwrap();
    assert_eq!(last[at("ema_test_accuracy")].parse::<f64>().ok(), row["ema_test_accuracy"].as_f64());
    assert!(last[at("swa_test_accuracy")].is_empty(), "{last:?}");
    one_line_error(&["evaluate", s(&dir), "--weights", "swa"], &["--weights swa", "--swa-start", "raw, ema"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A folder that is not a run, a missing or corrupted checkpoint: one line each, never a panic.
#[test]
fn evaluate_refuses_bad_folders_in_one_line() {
    let missing = out("eval-missing");
    one_line_error(&["evaluate", s(&missing)], &["no such folder"]);
    let plain = out("eval-plain");
    std::fs::create_dir_all(&plain).unwrap();
    one_line_error(&["evaluate", s(&plain)], &["not a run folder"]);
    let dir = out("eval-corrupt");
    tiny(&dir, "5", &[]);
    let ck = dir.join("checkpoint.safetensors");
    let mut bytes = std::fs::read(&ck).unwrap();
    let k = bytes.len() - 10;
    bytes[k] ^= 0x40;
    std::fs::write(&ck, &bytes).unwrap();
    one_line_error(&["evaluate", s(&dir)], &["checksum"]);
    std::fs::write(&ck, b"not a checkpoint").unwrap();
    one_line_error(&["evaluate", s(&dir)], &["checkpoint.safetensors"]);
    std::fs::remove_file(&ck).unwrap();
    one_line_error(&["evaluate", s(&dir)], &["no checkpoint"]);
    let err = run_err(&["evaluate", s(&dir), "--weights", "best"]);
    assert!(err.contains("--weights") && err.contains("raw, ema, swa"), "{err}");
    for d in [plain, dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Averaging flags: each wrong combination is one line naming the flag.
#[test]
fn averaging_flags_are_checked() {
    let dir = out("avg-flags");
    let base = ["train", "--model", "mlp", "--steps", "2", "--out", s(&dir)];
    let with = |extra: &[&'static str]| -> Vec<&str> { [&base[..], extra].concat() };
    one_line_error(&with(&["--ema", "1.5"]), &["--ema 1.5", "[0, 1]"]);
    one_line_error(&with(&["--ema-warmup"]), &["--ema-warmup", "--ema"]);
    one_line_error(&with(&["--swa-start", "1"]), &["--swa-start", "--swa-lr"]);
    one_line_error(&with(&["--swa-lr", "0.01"]), &["--swa-lr", "--swa-start"]);
    one_line_error(&with(&["--swa-start", "0", "--swa-lr", "0.01"]), &["--swa-start 0"]);
    one_line_error(&with(&["--swa-start", "3", "--swa-lr", "0.01"]), &["--swa-start 3", "--epochs 1"]);
    one_line_error(&with(&["--ema", "0.9", "--swa-start", "1", "--swa-lr", "0.01"]), &["--ema", "--swa-start"]);
    one_line_error(&with(&["--average-buffers"]), &["--average-buffers"]);
    let err = run_err(&with(&["--swa-start", "1", "--swa-lr", "0.01", "--swa-anneal", "exp"]));
    assert!(err.contains("exp") && err.contains("cos") && err.contains("linear"), "{err}");
    one_line_error(&["train", "--model", "gpt", "--ema", "0.9", "--steps", "2", "--out", s(&dir)], &["--ema", "gpt"]);
    one_line_error(&with(&["--hidden", "0"]), &["--hidden 0"]);
    one_line_error(&["train", "--model", "lenet", "--hidden", "8", "--out", s(&dir)], &["--hidden", "mlp"]);
    one_line_error(&["train", "--model", "mlp", "--width", "3", "--out", s(&dir)], &["--width", "lenet"]);
    assert!(!dir.exists());
}

/// SWA over two short epochs (59 500 training samples at batch 2 000: 30 steps an epoch): epoch 2 is averaged, its rate follows SWALR, and `evaluate
/// --weights swa` gives the averaged weights' accuracy.
#[test]
fn swa_runs_and_evaluates() {
    let dir = out("swa");
    let text = run_ok(&[
        "train",
        "--model",
        "mlp",
        "--epochs",
        "2",
        "--batch-size",
        "2000",
        "--validation",
        "500",
        "--threads",
        "1",
        "--swa-start",
        "1",
        "--swa-lr",
        "0.0005",
        "--swa-anneal-epochs",
        "1",
        "--out",
        s(&dir),
    ]);
    let swa_line = line_with(&text, "swa validation accuracy: ");
    assert!(swa_line.contains("(2 updates"), "{swa_line}");
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(rows[0]["swa_test_accuracy"].is_f64() && rows[1]["swa_test_accuracy"].is_f64());
    // Epoch 1 at Adam's 1e-3, epoch 2 at SWALR's 5e-4 (one annealing epoch).
    assert!((rows[0]["lr"].as_f64().unwrap() - 1e-3).abs() < 1e-12, "{metrics}");
    assert!((rows[1]["lr"].as_f64().unwrap() - 5e-4).abs() < 1e-9, "{metrics}");
    let ev = run_ok(&["evaluate", s(&dir), "--weights", "swa", "--threads", "1"]);
    assert!(swa_line.starts_with(&format!("swa {}", last_line(&ev))), "{swa_line} vs {ev}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `descent ensemble`: a table of the members and the ensemble, ending with the ensemble's
/// accuracy; members of different models are refused in one line.
#[test]
fn ensemble_of_tiny_runs() {
    let (a, b, c) = (out("ens-a"), out("ens-b"), out("ens-c"));
    tiny(&a, "30", &["--seed", "1"]);
    tiny(&b, "30", &["--seed", "2"]);
    let text = run_ok(&["ensemble", s(&a), s(&b), "--threads", "1"]);
    assert!(text.contains("ensemble: majority vote") && text.contains("ensemble: mean probability"), "{text}");
    assert!(last_line(&text).starts_with("validation accuracy: "), "{text}");
    for d in [&a, &b] {
        let acc = last_line(&run_ok(&["evaluate", s(d), "--threads", "1"]))
            .trim_start_matches("validation accuracy: ")
            .to_string();
        assert!(text.contains(&acc), "{acc} not in {text}");
    }
    // A copy of a member's folder is that member again, not a second one.
    let copy = out("ens-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(&a).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, copy.join(p.file_name().unwrap())).unwrap();
        }
    }
    one_line_error(&["ensemble", s(&a), s(&copy)], &["the same run as", "a copy"]);
    // So is it as a distillation's second teacher (refused before any folder is made).
    let student = out("ens-copy-student");
    one_line_error(
        &[
            "distill",
            "--teacher",
            s(&a),
            "--teacher",
            s(&copy),
            "--student",
            "mlp",
            "--steps",
            "2",
            "--out",
            s(&student),
        ],
        &["--teacher", "the same run as", "not another teacher"],
    );
    assert!(!student.exists());
    // A teacher's path that config.json cannot record is refused naming the flag.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let odd = copy.with_file_name(std::ffi::OsStr::from_bytes(b"ens-\xff\xfe"));
        std::fs::rename(&copy, &odd).unwrap();
        let o = common::descent()
            .args(["distill", "--teacher"])
            .arg(&odd)
            .args(["--student", "mlp", "--steps", "2", "--out", s(&student)])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains("--teacher") && e.contains("not a UTF-8 path"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        std::fs::rename(&odd, &copy).unwrap();
    }
    run_ok(&["train", "--model", "linear", "--steps", "3", "--threads", "1", "--out", s(&c)]);
    one_line_error(&["ensemble", s(&a), s(&c)], &["linear", "not a classifier"]);
    let d = out("ens-d");
    run_ok(&[
        "train",
        "--model",
        "lenet",
        "--width",
        "1",
        "--steps",
        "2",
        "--validation",
        "500",
        "--threads",
        "1",
        "--out",
        s(&d),
    ]);
    one_line_error(&["ensemble", s(&a), s(&d)], &["lenet", "mlp", "one model"]);
    for x in [a, b, c, d] {
        let _ = std::fs::remove_dir_all(x);
    }
}

/// `descent distill`: a small MLP student (16 hidden units) from a teacher run; its run folder is
/// a run (`evaluate` reproduces its accuracy, its config names the teacher); a regression teacher
/// is refused in one line.
#[test]
fn distill_a_small_student() {
    let (t, st, lin) = (out("dist-teacher"), out("dist-student"), out("dist-linear"));
    tiny(&t, "40", &[]);
    let text = small_student(&t, &st, "30");
    assert!(last_line(&text).starts_with("validation accuracy: "), "{text}");
    let ev = run_ok(&["evaluate", s(&st), "--threads", "1"]);
    assert_eq!(last_line(&ev), last_line(&text));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(st.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["hidden"], 16);
    assert_eq!(cfg["distill"]["alpha"], 0.9);
    assert_eq!(cfg["distill"]["teachers"][0], s(&t));
    // Resumed through `descent train`, with its teacher; its config.toml replays it.
    let resumed = run_ok(&["train", "--resume", s(&st), "--steps", "35", "--threads", "1"]);
    assert!(last_line(&resumed).starts_with("validation accuracy: "), "{resumed}");
    let again = out("dist-again");
    let toml = st.join("config.toml");
    run_ok(&["train", "--config", s(&toml), "--steps", "30", "--threads", "1", "--out", s(&again)]);
    let steps = |d: &Path| std::fs::read_to_string(d.join("steps.jsonl")).unwrap();
    assert_eq!(steps(&again), steps(&st).lines().take(30).map(|l| format!("{l}\n")).collect::<String>());
    let _ = std::fs::remove_dir_all(&again);
    run_ok(&["train", "--model", "linear", "--steps", "3", "--threads", "1", "--out", s(&lin)]);
    let args = |teacher: &Path| {
        vec![
            "distill".to_string(),
            "--teacher".into(),
            s(teacher).into(),
            "--student".into(),
            "mlp".into(),
            "--steps".into(),
            "2".into(),
            "--out".into(),
            s(&out("dist-never")).into(),
        ]
    };
    let strs = |v: &Vec<String>| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let a = strs(&args(&lin));
    one_line_error(&a.iter().map(|x| x.as_str()).collect::<Vec<_>>(), &["--teacher", "not a classifier"]);
    let mut b = strs(&args(&t));
    b.extend(["--alpha".to_string(), "1.5".to_string()]);
    one_line_error(&b.iter().map(|x| x.as_str()).collect::<Vec<_>>(), &["--alpha 1.5"]);
    let mut c = strs(&args(&t));
    c[4] = "linear".into();
    one_line_error(&c.iter().map(|x| x.as_str()).collect::<Vec<_>>(), &["--student linear", "classifier"]);
    let mut d = strs(&args(&t));
    d.extend(["--model".to_string(), "lenet".to_string()]);
    one_line_error(&d.iter().map(|x| x.as_str()).collect::<Vec<_>>(), &["--model", "--student"]);
    // The teacher's own folder as the student's, even with --force: refused, the teacher kept.
    let before = std::fs::read(t.join("checkpoint.safetensors")).unwrap();
    let mut e = strs(&args(&t));
    e[8] = s(&t).into();
    e.push("--force".into());
    one_line_error(&e.iter().map(|x| x.as_str()).collect::<Vec<_>>(), &["--out", "the teacher"]);
    assert_eq!(std::fs::read(t.join("checkpoint.safetensors")).unwrap(), before);
    // α = 0 would leave the teachers without effect: refused.
    let mut f = strs(&args(&t));
    f.extend(["--alpha".to_string(), "0".to_string()]);
    one_line_error(&f.iter().map(|x| x.as_str()).collect::<Vec<_>>(), &["--alpha 0", "descent train"]);
    // A teacher trained further since the run began: its resume is refused, naming the teacher.
    run_ok(&["train", "--resume", s(&t), "--steps", "45", "--threads", "1"]);
    one_line_error(&["train", "--resume", s(&st), "--steps", "40", "--threads", "1"], &["run's teacher", "weights"]);
    for x in [t, st, lin] {
        let _ = std::fs::remove_dir_all(x);
    }
}

/// A project folder moved with its runs: the student's config names its teacher's old absolute
/// folder, and a resume finds the teacher where it was beside the student (its weights checked
/// as always), saying so.
#[test]
fn a_moved_distillation_finds_its_teacher_beside_it() {
    let (proj, moved) = (out("dist-proj"), out("dist-moved"));
    std::fs::create_dir_all(&*proj).unwrap();
    tiny(&proj.join("t"), "20", &[]);
    let student = proj.join("s");
    let t = proj.join("t");
    small_student(&t, &student, "10");
    std::fs::rename(&*proj, &*moved).unwrap();
    let text = run_ok(&["train", "--resume", s(&moved.join("s")), "--steps", "15", "--threads", "1"]);
    assert!(text.contains("is gone") && text.contains("beside the run"), "{text}");
    line_with(&text, "validation accuracy: ");
    // Another run in the teacher's place: its config.toml, replayed elsewhere, refuses it.
    std::fs::remove_dir_all(moved.join("t")).unwrap();
    tiny(&moved.join("t"), "25", &[]);
    let again = out("dist-moved-again");
    let config = moved.join("s").join("config.toml");
    one_line_error(&["train", "--config", s(&config), "--out", s(&again), "--threads", "1"], &["teacher", "weights"]);
}
