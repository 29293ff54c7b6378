//! The README's reliability promises, as a user meets them: what `--force` may delete, locked run
//! folders, whole-record metric files after a kill, verified checkpoints, resume that refuses what
//! contradicts the run, exact numbers through every file, and one-line errors for bad settings.

mod common;

use std::path::Path;
use std::process::Output;

use common::{descent, s};

fn fresh(tag: &str) -> common::Scratch {
    let d = common::out(&format!("rel-{tag}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> (bool, String) {
    let o = descent().args(args).output().unwrap();
    (o.status.success(), text(&o))
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A linear-regression run (fast: about a second an epoch).
fn linear(out: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["train", "--model", "linear", "--threads", "1", "--out", s(out)];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn force_deletes_nothing_descent_did_not_write() {
    let d = fresh("force");
    // A folder of the user's files, by path and as the working folder (`--out .`).
    let mine = d.join("some dir");
    std::fs::create_dir_all(mine.join("sub")).unwrap();
    std::fs::write(mine.join("thesis.tex"), "years of work").unwrap();
    std::fs::write(mine.join("sub/data.csv"), "1,2").unwrap();
    let before = names(&mine);
    for cmd in [
        vec!["train", "--model", "linear", "--out", s(&mine), "--force"],
        vec!["compare", "--model", "linear", "--run", "sgd:lr=0.1", "--out", s(&mine), "--force"],
        vec!["landscape", "--function", "beale", "--steps", "5", "--out", s(&mine), "--force"],
        vec!["lr-find", "--model", "linear", "--num-steps", "20", "--out", s(&mine), "--force"],
        vec![
            "sweep",
            "--model",
            "linear",
            "--param",
            "lr=loguniform:1e-3..1e-1",
            "--trials",
            "1",
            "--objective",
            "val_loss",
            "--out",
            s(&mine),
            "--force",
        ],
    ] {
        let (ok, t) = run(&cmd);
        assert!(!ok && t.contains("not a folder descent wrote"), "{cmd:?}: {t}");
        assert_eq!(names(&mine), before, "{cmd:?} touched the folder");
    }
    let o =
        descent().current_dir(&mine).args(["train", "--model", "linear", "--out", ".", "--force"]).output().unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(names(&mine), before);
    assert_eq!(read(&mine.join("thesis.tex")), "years of work");

    // A run folder: --force replaces descent's files and keeps the user's.
    let r = d.join("run");
    assert!(linear(&r, &["--epochs", "1"]).0);
    std::fs::write(r.join("notes.md"), "my notes").unwrap();
    let (ok, t) = linear(&r, &["--epochs", "1"]);
    assert!(!ok && t.contains("--force") && t.contains("--resume"), "{t}");
    let (ok, t) = linear(&r, &["--epochs", "1", "--optimizer", "sgd", "--force"]);
    assert!(ok, "{t}");
    assert_eq!(read(&r.join("notes.md")), "my notes");
    assert!(read(&r.join("config.json")).contains("\"optimizer\": \"sgd\""));
    // A folder of another kind is not replaced by --force either.
    let (ok, t) = run(&["landscape", "--function", "beale", "--steps", "5", "--out", s(&r), "--force"]);
    assert!(!ok && t.contains("descent run folder"), "{t}");
    assert!(r.join("checkpoint.safetensors").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_failing_command_leaves_no_folder_and_bad_settings_are_named_in_a_line() {
    let d = fresh("bad");
    let out = d.join("run");
    let toml = d.join("c.toml");
    std::fs::write(&toml, "model = \"linear\"\nsteps = \"fifty\"\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--lr", "nan"], "--lr"),
        (vec!["--lr", "inf"], "--lr"),
        (vec!["--lr", "1e400"], "--lr"),
        (vec!["--lr", "-0.1"], "at least 0"),
        (vec!["--hparams", "{\"lr\": -1}"], "learning rate"),
        (vec!["--dropout", "1"], "--dropout"),
        (vec!["--clip-norm", "0"], "--clip-norm"),
        (vec!["--clip-value", "-1"], "--clip-value"),
        (vec!["--threads", "0"], "--threads"),
        (vec!["--threads", "100000"], "--threads"),
        (vec!["--batch-size", "0"], "--batch-size"),
        (vec!["--epochs", "0"], "--epochs"),
        (vec!["--steps", "0"], "--steps"),
        (vec!["--l2", "-1"], "--l2"),
        (vec!["--target-accuracy", "150"], "--target-accuracy"),
        (vec!["--schedule", "cosine", "--schedule-args", "{\"T_max\": 5}"], "--schedule-args"),
        (vec!["--group", "nosuchparam={\"lr\": 0.1}"], "nosuchparam"),
        (vec!["--config", s(&toml)], "steps"),
    ];
    for (extra, needle) in cases {
        let o = descent()
            .env("RUST_BACKTRACE", "1")
            .args(["train", "--model", "linear", "--out", s(&out)])
            .args(&extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "{extra:?} was accepted");
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(err.lines().count() <= 2 && !err.contains("backtrace"), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?} left a run folder behind");
    }
    // A key given twice in a JSON argument (serde_json would keep the last and drop the other
    // silently), refused by the argument parser: its line, then clap's pointer to --help.
    for (extra, needle) in [
        (["--hparams", "{\"lr\": 0.1, \"lr\": 0.2}"], "`lr` given twice"),
        (["--group", "bias={\"weight_decay\": 0, \"nested\": {\"a\": 1, \"a\": 2}}"], "`a` given twice"),
    ] {
        let o = descent().args(["train", "--model", "linear", "--out", s(&out)]).args(extra).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && err.lines().next().is_some_and(|l| l.contains(needle)), "{extra:?}: {err}");
        assert!(err.lines().filter(|l| !l.is_empty()).count() <= 2, "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?} left a run folder behind");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_second_command_on_a_folder_in_use_is_refused() {
    let d = fresh("lock");
    let r = d.join("run");
    let mut first = descent()
        .args(["train", "--model", "mlp", "--epochs", "20", "--threads", "1", "--out", s(&r)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !r.join("config.json").exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (ok, t) = linear(&r, &["--force"]);
    assert!(!ok && t.contains("in use by another descent command"), "{t}");
    let (ok, t) = run(&["train", "--resume", s(&r)]);
    assert!(!ok && t.contains("in use"), "{t}");
    first.kill().unwrap();
    first.wait().unwrap();
    // The kernel released the lock with the process: the folder is usable again.
    let (ok, t) = linear(&r, &["--force", "--steps", "5"]);
    assert!(ok, "{t}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// Every line of a metric file is a whole record.
fn assert_whole_lines(dir: &Path) {
    for f in ["steps.jsonl", "metrics.jsonl"] {
        let t = read(&dir.join(f));
        assert!(t.ends_with('\n'), "{f}");
        for l in t.lines() {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{f}: `{l}`: {e}"));
        }
    }
    for (f, w) in [("steps.csv", 5), ("metrics.csv", 12)] {
        let t = read(&dir.join(f));
        assert!(t.lines().all(|l| l.split(',').count() == w), "{f}: {t}");
    }
}

#[test]
fn resume_cuts_torn_lines_and_continues_bit_for_bit() {
    let d = fresh("torn");
    let (a, b) = (d.join("a"), d.join("b"));
    assert!(linear(&a, &["--epochs", "3"]).0);
    assert!(linear(&b, &["--epochs", "1"]).0);
    // A kill mid-write of the next epoch's lines, after the checkpoint.
    for (f, torn) in
        [("steps.jsonl", "{\"step\": 999, \"ep"), ("metrics.jsonl", "{\"epoch\": 2, \"st"), ("steps.csv", "999,2,0.1")]
    {
        let mut t = read(&b.join(f));
        t += torn;
        std::fs::write(b.join(f), t).unwrap();
    }
    let (ok, t) = run(&["train", "--resume", s(&b), "--epochs", "3"]);
    assert!(ok, "{t}");
    assert_whole_lines(&b);
    let (ok, t) = run(&["plot", s(&b), "--out", s(&d.join("plot"))]);
    assert!(ok && !t.contains("warning"), "{t}");
    // A metric file gone: its charts would be empty, and the plot says why.
    let gone = d.join("gone");
    assert!(linear(&gone, &["--epochs", "1"]).0);
    std::fs::remove_file(gone.join("metrics.jsonl")).unwrap();
    let (ok, t) = run(&["plot", s(&gone), "--out", s(&d.join("plot-gone"))]);
    assert!(ok && t.contains("warning") && t.contains("no metrics.jsonl"), "{t}");
    let losses = |dir: &Path| read(&dir.join("steps.csv"));
    assert_eq!(losses(&a), losses(&b));

    // A run stopped by --steps mid-epoch continues that epoch exactly.
    let (c, e) = (d.join("c"), d.join("e"));
    assert!(linear(&c, &["--steps", "450", "--epochs", "2"]).0);
    assert!(linear(&e, &["--steps", "100", "--epochs", "2"]).0);
    let (ok, t) = run(&["train", "--resume", s(&e), "--steps", "450"]);
    assert!(ok, "{t}");
    assert_eq!(losses(&c), losses(&e));
    let epochs = |dir: &Path| {
        read(&dir.join("metrics.csv"))
            .lines()
            .map(|l| l.split(',').take(3).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
    };
    assert_eq!(epochs(&c), epochs(&e));
    assert_whole_lines(&e);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn random_kills_then_resume_leave_whole_files() {
    let d = fresh("kill");
    for k in 0..2u64 {
        let r = d.join(format!("r{k}"));
        let mut child = descent()
            .args(["train", "--model", "linear", "--epochs", "200", "--threads", "1", "--out", s(&r)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300 + 370 * k));
        child.kill().unwrap();
        child.wait().unwrap();
        let (ok, t) = run(&["train", "--resume", s(&r)]);
        if r.join("checkpoint.safetensors").exists() {
            assert!(ok, "{t}");
            assert_whole_lines(&r);
        } else {
            assert!(!ok && t.contains("no checkpoint"), "{t}");
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn checkpoints_are_verified_before_resume() {
    let d = fresh("ck");
    let (a, b) = (d.join("a"), d.join("b"));
    assert!(linear(&a, &["--epochs", "1"]).0);
    assert!(linear(&b, &["--epochs", "1"]).0);
    // One run given twice to an ensemble (spelled differently) would vote twice.
    let (ok, t) = run(&["ensemble", s(&a), &format!("{}/.", s(&a))]);
    assert!(!ok && t.contains("given twice"), "{t}");
    let ck = a.join("checkpoint.safetensors");
    let good = std::fs::read(&ck).unwrap();
    // A flipped bit in the tensor data.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 3] ^= 0x10;
    std::fs::write(&ck, &bad).unwrap();
    let (ok, t) = run(&["train", "--resume", s(&a), "--epochs", "2"]);
    assert!(!ok && t.contains("checksum"), "{t}");
    // Another run's checkpoint copied in.
    std::fs::copy(b.join("checkpoint.safetensors"), &ck).unwrap();
    let (ok, t) = run(&["train", "--resume", s(&a), "--epochs", "2"]);
    assert!(!ok && t.contains("another run"), "{t}");
    // Every command that reads a run's checkpoint with its settings refuses it too.
    for cmd in [
        vec!["evaluate", s(&a)],
        vec!["quantize", s(&a), "--out", s(&d.join("q"))],
        vec!["prune", s(&a), "--method", "l1_unstructured", "--amount", "0.5", "--out", s(&d.join("p"))],
        vec!["compress-report", s(&a)],
    ] {
        let (ok, t) = run(&cmd);
        assert!(!ok && t.contains("another run"), "{cmd:?}: {t}");
    }
    // A run's length edited in config.json where the schedule spans it: the rates of the steps
    // taken would change (as with a larger --steps, which is refused).
    let cos = d.join("cos");
    let (ok, t) = run(&["train", "--model", "linear", "--steps", "6", "--schedule", "cosine", "--out", s(&cos)]);
    assert!(ok, "{t}");
    let cos_cfg = read(&cos.join("config.json"));
    assert!(cos_cfg.contains("\"steps\": 6"), "{cos_cfg}");
    std::fs::write(cos.join("config.json"), cos_cfg.replace("\"steps\": 6", "\"steps\": 12")).unwrap();
    let (ok, t) = run(&["train", "--resume", s(&cos)]);
    assert!(!ok && t.contains("config.json was changed"), "{t}");
    // An edited config.
    std::fs::write(&ck, &good).unwrap();
    let cfg = read(&a.join("config.json"));
    std::fs::write(a.join("config.json"), cfg.replace("\"batch_size\": 32", "\"batch_size\": 64")).unwrap();
    let (ok, t) = run(&["train", "--resume", s(&a), "--epochs", "2"]);
    assert!(!ok && t.contains("config.json was changed"), "{t}");
    std::fs::write(a.join("config.json"), cfg).unwrap();
    let (ok, t) = run(&["train", "--resume", s(&a), "--epochs", "2"]);
    assert!(ok, "{t}");
    // A run killed before its first checkpoint: no checkpoint and no finished epoch on record
    // (one gone after its epochs were recorded is `a_lost_checkpoint_is_named_as_lost`).
    std::fs::remove_file(b.join("checkpoint.safetensors")).unwrap();
    std::fs::write(b.join("metrics.jsonl"), "").unwrap();
    let (ok, t) = run(&["train", "--resume", s(&b), "--epochs", "2"]);
    assert!(!ok && t.contains("no checkpoint") && t.contains("--force"), "{t}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn resume_refuses_contradicting_flags_and_says_when_nothing_is_left() {
    let d = fresh("flags");
    let r = d.join("r");
    let lr = "0.0011505071387557337";
    assert!(linear(&r, &["--epochs", "2", "--lr", lr]).0);
    let snapshot = |dir: &Path| {
        names(dir)
            .iter()
            .filter(|n| !n.starts_with('.'))
            .map(|n| (n.clone(), std::fs::read(dir.join(n)).ok()))
            .collect::<Vec<_>>()
    };
    let before = snapshot(&r);
    for (flags, needle) in [
        (vec!["--lr", "0.5"], "--lr"),
        (vec!["--batch-size", "64"], "--batch-size"),
        (vec!["--seed", "3"], "--seed"),
        (vec!["--optimizer", "sgd"], "--optimizer"),
        (vec!["--model", "mlp"], "--model"),
        (vec!["--hparams", "{\"weight_decay\": 0.1}"], "--hparams"),
        (vec!["--schedule", "cosine"], "--schedule"),
        (vec!["--force"], "--force"),
        (vec!["--out", "elsewhere"], "--out"),
        (vec!["--epochs", "1"], "--epochs 1"),
        (vec!["--steps", "10"], "--steps 10"),
    ] {
        let mut args = vec!["train", "--resume", s(&r)];
        args.extend_from_slice(&flags);
        let (ok, t) = run(&args);
        assert!(!ok && t.contains(needle), "{flags:?}: {t}");
        assert_eq!(snapshot(&r), before, "{flags:?} changed the folder");
    }
    // A flag equal to the run's own setting is no contradiction; a finished run is left alone.
    let (ok, t) = run(&["train", "--resume", s(&r), "--model", "linear", "--lr", lr]);
    assert!(ok && t.contains("nothing to do"), "{t}");
    assert_eq!(snapshot(&r), before);
    // Floats survive the rewrite of the config exactly.
    let (ok, t) = run(&["train", "--resume", s(&r), "--epochs", "3"]);
    assert!(ok, "{t}");
    assert!(read(&r.join("config.json")).contains(lr), "{}", read(&r.join("config.json")));
    assert!(read(&r.join("config.toml")).contains(lr));
    // A run stopped by --steps says so instead of appending an empty epoch.
    let st = d.join("st");
    assert!(linear(&st, &["--steps", "40"]).0);
    let (ok, t) = run(&["train", "--resume", s(&st)]);
    assert!(ok && t.contains("nothing to do") && t.contains("--steps"), "{t}");
    assert_eq!(read(&st.join("metrics.jsonl")).lines().count(), 1);
    std::fs::remove_dir_all(&d).unwrap();
}

/// MNIST-format idx files of `n` images `rows`×`cols` (plain, not gzipped).
fn write_idx_set(dir: &Path, n_train: u32, n_test: u32, rows: u32, cols: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let images = |n: u32| {
        let mut b = vec![0, 0, 8, 3];
        for x in [n, rows, cols] {
            b.extend_from_slice(&x.to_be_bytes());
        }
        b.extend((0..n * rows * cols).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8));
        b
    };
    let labels = |n: u32| {
        let mut b = vec![0, 0, 8, 1];
        b.extend_from_slice(&n.to_be_bytes());
        b.extend((0..n).map(|i| (i % 10) as u8));
        b
    };
    std::fs::write(dir.join("train-images-idx3-ubyte"), images(n_train)).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), labels(n_train)).unwrap();
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), images(n_test)).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), labels(n_test)).unwrap();
}

#[test]
fn data_that_does_not_fit_the_model_is_named_when_loaded() {
    let d = fresh("data");
    let small = d.join("small");
    write_idx_set(&small, 50, 20, 14, 14);
    let (ok, t) = run(&["train", "--model", "lenet", "--data", s(&small), "--out", s(&d.join("r"))]);
    assert!(!ok && t.contains("14×14") && t.contains("train-images-idx3-ubyte"), "{t}");
    assert!(t.lines().count() <= 2, "{t}");
    // A file that exists but cannot be read is not reported as missing.
    let odd = d.join("odd");
    write_idx_set(&odd, 50, 20, 28, 28);
    std::fs::remove_file(odd.join("train-labels-idx1-ubyte")).unwrap();
    std::fs::create_dir(odd.join("train-labels-idx1-ubyte")).unwrap();
    let (ok, t) = run(&["train", "--model", "mlp", "--data", s(&odd), "--out", s(&d.join("r"))]);
    assert!(!ok && !t.contains("missing") && t.contains("train-labels-idx1-ubyte"), "{t}");
    assert!(!d.join("r").exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_sweep_counts_epochs_on_its_own_data_and_records_choices_exactly() {
    let d = fresh("sweepdata");
    let data = d.join("data");
    write_idx_set(&data, 640, 100, 28, 28);
    let out = d.join("sweep");
    let (ok, t) = run(&[
        "sweep",
        "--model",
        "mlp",
        "--data",
        s(&data),
        "--validation",
        "320",
        "--batch-size",
        "32",
        "--param",
        "lr=choice:0.0011505071387557337|0.002",
        "--method",
        "grid",
        "--objective",
        "val_loss",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--out",
        s(&out),
    ]);
    assert!(ok, "{t}");
    let trials = read(&out.join("trials.jsonl"));
    assert!(trials.contains("0.0011505071387557337"), "{trials}");
    for l in trials.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["epochs"].as_f64(), Some(1.0), "{l}");
        assert_eq!(v["steps"].as_u64(), Some(10), "{l}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// A run stopped by a NaN loss keeps the steps it took before it (the losses that diverged) in
/// steps.csv; the error names the step.
#[test]
fn a_run_stopped_by_a_nan_loss_keeps_its_steps() {
    let scratch = fresh("nan-steps");
    let d = scratch.join("run");
    let args = ["train", "--model", "mlp", "--steps", "30", "--lr", "1e10", "--optimizer", "sgd", "--threads", "1"];
    let (ok, o) = run(&[&args[..], &["--out", s(&d)]].concat());
    assert!(!ok && o.contains("loss is NaN at step 3"), "{o}");
    let rows = read(&d.join("steps.csv"));
    assert_eq!(rows.lines().count(), 3, "the header and steps 1 and 2: {rows}");
}

#[test]
fn every_command_refuses_what_it_would_ignore_or_cannot_honour() {
    let d = fresh("refuse");
    let out = d.join("out");
    let nan_toml = d.join("nan.toml");
    std::fs::write(&nan_toml, "model = \"linear\"\nlr = nan\n").unwrap();
    let empty = d.join("empty");
    write_idx_set(&empty, 0, 10, 28, 28);
    // A value of the wrong type in a config file is refused even where a flag overrides it.
    let typo_toml = d.join("typo.toml");
    std::fs::write(&typo_toml, "model = \"linear\"\nepochs = \"two\"\n").unwrap();
    // A TOML date where a number belongs, in a compare's [[run]] table.
    let date_toml = d.join("date.toml");
    std::fs::write(&date_toml, "model = \"linear\"\n[[run]]\noptimizer = \"sgd\"\nlr = 1979-05-27\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["train", "--config", s(&nan_toml)], "lr"),
        (vec!["compare", "--config", s(&date_toml)], "date.toml: run 1.lr: 1979-05-27 is a TOML date"),
        (vec!["train", "--config", s(&typo_toml), "--epochs", "1"], "`epochs`: invalid type"),
        // A decay "to" a rate above the run's (here the optimizer's default rate) would raise it.
        (vec!["train", "--model", "linear", "--schedule", "warmup_cosine", "--min-lr", "0.5"], "adam's default"),
        (vec!["train", "--model", "linear", "--accumulate", "18446744073709551615"], "--accumulate"),
        // What acts between epochs, in a run that ends within its first (or before it could act).
        (vec!["train", "--model", "mlp", "--steps", "20", "--schedule", "exponential"], "--schedule exponential"),
        (vec!["train", "--model", "linear", "--epochs", "1", "--schedule", "step"], "--schedule step"),
        (vec!["train", "--model", "mlp", "--steps", "5", "--patience", "1"], "--patience 1"),
        (
            vec![
                "train",
                "--model",
                "mlp",
                "--steps",
                "5",
                "--schedule",
                "torch.StepLR",
                "--schedule-args",
                r#"{"step_size": 1}"#,
                "--schedule-interval",
                "epoch",
            ],
            "--schedule-interval step",
        ),
        (
            // (A batch under 2^63, which config.toml holds, whose step of 4 overflows the count.)
            vec!["train", "--model", "linear", "--batch-size", "4611686018427387904", "--accumulate", "4"],
            "--accumulate",
        ),
        (vec!["distill", "--teacher", s(&d), "--student", "gpt"], "--student gpt"),
        (vec!["train", "--model", "mlp", "--augment", "translate=2,translate=3"], "`translate` given twice"),
        (vec!["train", "--model", "linear", "--seed", "18446744073709551615"], "--seed"),
        (
            vec!["train", "--model", "mlp", "--epochs", "1", "--steps", "3", "--swa-start", "1", "--swa-lr", "0.01"],
            "--swa-start 1: --steps 3",
        ),
        (
            vec![
                "sweep",
                "--model",
                "linear",
                "--epochs",
                "1",
                "--steps",
                "3",
                "--param",
                "lr=loguniform:1e-3..1e-1",
                "--pruner",
                "asha",
                "--min-steps",
                "100",
                "--objective",
                "val_loss",
            ],
            "no rung",
        ),
        (
            vec![
                "sweep",
                "--model",
                "mlp",
                "--param",
                "lr=loguniform:1e-3..1e-1",
                "--objective",
                "test_accuracy",
                "--validation",
                "100",
            ],
            "--validation 100",
        ),
        (
            vec!["bench", "optimizers", "--model", "mlp", "--grid-points", "1", "--run", "adam", "--swa-start", "1"],
            "--swa-lr",
        ),
        (vec!["landscape", "--steps", "3", "--function", "rosenbrock", "--function", "rosenbrock"], "given twice"),
        // --validation 0 given where a split is needed (0 is also the flag's default, which such a
        // command replaces by a split).
        (
            vec![
                "sweep",
                "--model",
                "linear",
                "--param",
                "lr=loguniform:1e-3..1e-1",
                "--objective",
                "val_loss",
                "--validation",
                "0",
            ],
            "--validation 0",
        ),
        (vec!["bench", "optimizers", "--model", "mlp", "--run", "adam", "--validation", "0"], "--validation 0"),
        (vec!["landscape", "--steps", "3", "--run", "adam:lr=0.1", "--run", "adam:lr=0.1"], "given twice"),
        (vec!["train", "--model", "mlp", "--augment", ""], "no setting"),
        (vec!["train", "--model", "mlp", "--augment", "translate=100"], "at most 28"),
        // Counted in optimizer steps of --accumulate micro-batches each (157 here, not 313).
        (
            vec![
                "train",
                "--model",
                "linear",
                "--epochs",
                "1",
                "--accumulate",
                "2",
                "--prune-to",
                "0.5",
                "--prune-end",
                "200",
            ],
            "--prune-end 200",
        ),
        // A pruning schedule that would end after the run: the sparsity asked for never reached.
        (
            vec![
                "train",
                "--model",
                "linear",
                "--steps",
                "3",
                "--prune-to",
                "0.5",
                "--prune-start",
                "1",
                "--prune-end",
                "200",
            ],
            "--prune-end 200",
        ),
        // A stopping rule that could end the run before its pruning does.
        (vec!["train", "--model", "linear", "--epochs", "3", "--prune-to", "0.5", "--patience", "1"], "--patience"),
        (
            vec!["train", "--model", "mlp", "--epochs", "3", "--prune-to", "0.5", "--target-accuracy", "80"],
            "--target-accuracy",
        ),
        (vec!["lr-find", "--model", "linear", "--ema", "0.9"], "--ema"),
        (vec!["lr-find", "--model", "linear", "--prune-to", "0.5"], "--prune-to"),
        (vec!["lr-find", "--model", "linear", "--log-grad-norms"], "--log-grad-norms"),
        (vec!["lr-find", "--model", "linear", "--min-lr", "1e-4"], "lr-find does not use --min-lr"),
        (vec!["lr-find", "--model", "linear", "--min-delta", "0.1"], "lr-find does not use --min-delta"),
        (vec!["lr-find", "--model", "linear", "--steps", "5"], "--steps (use --num-steps)"),
        // Kron's groups share one preconditioner schedule in the library: one group, of every parameter.
        (vec!["train", "--model", "mlp", "--optimizer", "po.kron", "--group", "fc1={\"lr\": 0.1}"], "one --group"),
        // A searched length that --steps makes the same for every trial.
        (
            vec!["sweep", "--model", "mlp", "--steps", "20", "--param", "epochs=int:1..3"],
            "the dimension changes nothing",
        ),
        // Sparse gradients' optimizer where training gives dense ones (torch raises at the step).
        (vec!["train", "--model", "linear", "--optimizer", "torch.sparseadam"], "steps sparse gradients only"),
        (
            vec!["train", "--model", "linear", "--optimizer", "sam", "--hparams", "{\"base\": \"sparseadam\"}"],
            "in `sam`",
        ),
        // A batch larger than the training set, as train refuses it (lr-find took the whole set).
        (vec!["lr-find", "--model", "mlp", "--batch-size", "10000000"], "--batch-size 10000000: more than the 60000"),
        // Each zero count named alone.
        (vec!["bench", "optimizers", "--model", "mlp", "--seeds", "0"], "--seeds 0: give at least 1"),
        (vec!["bench", "sweep", "--trials", "0"], "--trials 0: give at least 1"),
        // A key given twice in a JSON value of a run or a search choice (serde_json keeps the last).
        (
            vec!["compare", "--model", "linear", "--run", "adam:hparams={\"betas\":[0.9,0.99],\"betas\":[0.8,0.9]}"],
            "`betas` given twice",
        ),
        (
            vec![
                "sweep",
                "--model",
                "linear",
                "--objective",
                "val_loss",
                "--param",
                "hparams=choice:{\"momentum\":0.9,\"momentum\":0.5}|{}",
            ],
            "`momentum` given twice",
        ),
        (
            vec!["train", "--model", "linear", "--lr", "0.1", "--optimizer", "sgd", "--hparams", "{\"lr\": 5}"],
            "same setting",
        ),
        (
            vec![
                "train",
                "--model",
                "linear",
                "--schedule",
                "optax.cosine_decay_schedule",
                "--schedule-args",
                "{\"init_value\": 0.1, \"decay_steps\": 0}",
            ],
            "`decay_steps`: must be positive",
        ),
        (
            vec![
                "train",
                "--model",
                "linear",
                "--schedule",
                "torch.OneCycleLR",
                "--schedule-args",
                "{\"max_lr\": 0.1, \"total_steps\": 100}",
            ],
            "total steps",
        ),
        (vec!["train", "--model", "mlp", "--data", s(&empty)], "no training images"),
        (vec!["train", "--model", "lenet", "--dropout", "0.5"], "--dropout"),
        (
            vec!["train", "--model", "linear", "--threads", "2", "--data-parallel", "2", "--optimizer", "lbfgs"],
            "--data-parallel",
        ),
        (
            vec![
                "train",
                "--model",
                "linear",
                "--optimizer",
                "optax.chain",
                "--lr",
                "0.1",
                "--hparams",
                "{\"links\": [[\"scale_by_adam\", {}], [\"scale\", {\"step_size\": -0.01}]]}",
            ],
            "takes no learning rate",
        ),
        (vec!["train", "--model", "linear", "--optimizer", "torch.rprop", "--schedule", "cosine"], "no learning rate"),
        (vec!["compare", "--model", "linear", "--run", "sgd:lr=0.1,lr=0.2"], "twice"),
        (vec!["compare", "--model", "linear", "--run", "sgd:lr=0.1", "--target", "nan"], "--target"),
        (vec!["compare", "--model", "linear", "--run", "sgd:lr=0.1", "--jobs", "0"], "--jobs"),
        (vec!["landscape", "--tol", "inf"], "--tol"),
        (vec!["landscape", "--steps", "18446744073709551615"], "--steps"),
        (vec!["lr-find", "--model", "linear", "--diverge", "nan"], "--diverge"),
        (
            vec![
                "train",
                "--model",
                "linear",
                "--lr",
                "0.5",
                "--schedule",
                "optax.constant_schedule",
                "--schedule-args",
                "{\"value\": 0.01}",
            ],
            "gives the learning rate itself",
        ),
        (
            vec![
                "train",
                "--model",
                "linear",
                "--optimizer",
                "sam",
                "--lr",
                "0.2",
                "--hparams",
                "{\"base\": [\"adamw\", {\"lr\": 0.5}]}",
            ],
            "the same setting",
        ),
        (
            vec![
                "sweep",
                "--model",
                "linear",
                "--objective",
                "val_loss",
                "--param",
                "lr=uniform:0.001..0.01",
                "--param",
                "lr=uniform:0.1..1",
            ],
            "given twice",
        ),
        (
            vec![
                "sweep",
                "--model",
                "linear",
                "--objective",
                "val_loss",
                "--lr",
                "0.5",
                "--param",
                "lr=uniform:0.001..0.01",
            ],
            "search dimension `lr`",
        ),
        (vec!["lr-find", "--model", "linear", "--config", s(&nan_toml)], "--config"),
        (vec!["bench", "optimizers", "--model", "mlp", "--config", s(&nan_toml)], "--config"),
        (vec!["bench", "optimizers", "--model", "mlp", "--shard-optimizer"], "--shard-optimizer"),
        (vec!["compare", "--model", "linear", "--run", "sgd:lr=0.1", "--shard-optimizer"], "--shard-optimizer"),
        (
            vec!["compare", "--model", "linear", "--run", "sgd:data_parallel=2"],
            "`data_parallel` is for `descent train`",
        ),
        (
            vec![
                "sweep",
                "--model",
                "linear",
                "--param",
                "lr=loguniform:1e-3..1e-1",
                "--objective",
                "val_loss",
                "--shard-optimizer",
            ],
            "--shard-optimizer",
        ),
        (vec!["lr-find", "--model", "linear", "--epochs", "5"], "--epochs"),
        (
            vec![
                "sweep",
                "--model",
                "linear",
                "--param",
                "lr=loguniform:1e-3..1e-1",
                "--objective",
                "val_loss",
                "--grid-points",
                "5",
            ],
            "--method grid",
        ),
        (
            vec![
                "sweep",
                "--model",
                "linear",
                "--param",
                "lr=loguniform:1e-3..1e-1",
                "--objective",
                "val_loss",
                "--pruner",
                "asha",
                "--min-steps",
                "0",
            ],
            "--min-steps",
        ),
        (
            vec![
                "sweep",
                "--model",
                "linear",
                "--param",
                "lr=loguniform:1e-3..1e-1",
                "--objective",
                "val_loss",
                "--method",
                "grid",
                "--grid-points",
                "100000",
                "--param",
                "wd=uniform:0..1",
            ],
            "grid",
        ),
        // A learning-rate grid reaching rates no optimizer can take (0, subnormal, infinite).
        (
            vec!["bench", "optimizers", "--model", "mlp", "--run", "sgd", "--grid-points", "100000"],
            "--grid-points 100000",
        ),
        // Settings under which every run of the benchmark would fail: refused before any runs.
        (
            vec!["bench", "optimizers", "--model", "mlp", "--steps", "3", "--run", "adam", "--patience", "1"],
            "--patience 1",
        ),
        (vec!["bench", "optimizers", "--model", "mlp", "--run", "sgd:label=."], "label `.`"),
        // A library schedule shorter than a language model's run (torch refuses to step it on).
        (
            vec![
                "train",
                "--model",
                "gpt",
                "--n-layer",
                "1",
                "--n-embd",
                "16",
                "--steps",
                "5",
                "--schedule",
                "torch.OneCycleLR",
                "--schedule-args",
                r#"{"max_lr": 0.01, "total_steps": 2}"#,
            ],
            "total steps is 2",
        ),
        (vec!["compare", "--model", "gpt", "--steps", "5", "--run", "adamw", "--target", "50"], "without accuracy"),
        (vec!["compare", "--model", "linear", "--run", "sgd", "--target", "50"], "without accuracy"),
        // A schedule sets a rate a landscape's optimizer must have, as `train` requires.
        (
            vec!["landscape", "--function", "beale", "--run", "rprop:lr=0.01,schedule=cosine"],
            "no constant learning rate a schedule can set",
        ),
        // A misspelt training key in a run's spec is named as such, not as the optimizer's.
        (vec!["compare", "--model", "linear", "--run", "adam:lrr=0.1"], "did you mean `lr`?"),
        // The rate of a Muon's Adam part is refused as --lr is.
        (
            vec![
                "train",
                "--model",
                "gpt",
                "--optimizer",
                "optax.contrib.muon",
                "--hparams",
                r#"{"adam_learning_rate": -3}"#,
            ],
            "`adam_learning_rate` -3",
        ),
    ];
    for (args, needle) in cases {
        let o = descent().args(&args).args(["--out", s(&out)]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.code() == Some(2), "{args:?}: {}", text(&o));
        assert!(err.contains(needle) && err.lines().count() <= 2, "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} left a folder behind");
    }
    // The learning rate in --hparams is --lr.
    let (ok, t) = run(&[
        "train",
        "--model",
        "linear",
        "--optimizer",
        "sgd",
        "--hparams",
        "{\"lr\": 0.05}",
        "--epochs",
        "1",
        "--out",
        s(&out),
    ]);
    assert!(ok && t.contains("(lr 0.05,"), "{t}");
    // A composition without a learning rate of its own trains with its links' rates.
    let chain = "{\"links\": [[\"scale_by_adam\", {}], [\"scale\", {\"step_size\": -0.01}]]}";
    let (ok, t) = run(&[
        "train",
        "--model",
        "linear",
        "--optimizer",
        "optax.chain",
        "--hparams",
        chain,
        "--steps",
        "3",
        "--out",
        s(&d.join("chain")),
    ]);
    assert!(ok, "{t}");
    // A resumed run or sweep refuses a config file or settings of its own.
    let ok_toml = d.join("ok.toml");
    std::fs::write(&ok_toml, "model = \"linear\"\n").unwrap();
    let (ok, t) = run(&["train", "--resume", s(&out), "--epochs", "2", "--config", s(&ok_toml)]);
    assert!(!ok && t.contains("--config"), "{t}");
    // A huge epoch count with a step limit is a run, not an overflow (up to 2^63 − 1, which its
    // config.toml holds: the file replays it; one more is refused by name).
    let (ok, t) = run(&[
        "train",
        "--model",
        "linear",
        "--epochs",
        "9223372036854775807",
        "--steps",
        "3",
        "--out",
        s(&d.join("big")),
    ]);
    assert!(ok, "{t}");
    let (ok, t) = run(&["train", "--config", s(&d.join("big").join("config.toml")), "--out", s(&d.join("big2"))]);
    assert!(ok, "{t}");
    let (ok, t) = run(&[
        "train",
        "--model",
        "linear",
        "--epochs",
        "9223372036854775808",
        "--steps",
        "3",
        "--out",
        s(&d.join("big3")),
    ]);
    assert!(!ok && t.contains("--epochs 9223372036854775808") && t.contains("2^63"), "{t}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn compare_force_clears_only_its_own_runs() {
    let d = fresh("cmpforce");
    let c = d.join("cmp");
    assert!(run(&["compare", "--model", "linear", "--epochs", "1", "--run", "sgd:lr=0.1", "--out", s(&c)]).0);
    // A user's own run put inside the comparison's runs/.
    let mine = c.join("runs").join("03-mine");
    assert!(linear(&mine, &["--epochs", "1"]).0);
    let (ok, t) =
        run(&["compare", "--model", "linear", "--epochs", "1", "--run", "sgd:lr=0.2", "--out", s(&c), "--force"]);
    assert!(ok, "{t}");
    assert!(mine.join("checkpoint.safetensors").exists(), "{:?}", names(&mine));
    assert!(!c.join("runs").join("01-sgd_lr=0.1").exists(), "{:?}", names(&c.join("runs")));
    // A user's file inside one of the comparison's own run folders: --force is refused before it
    // deletes anything (the new run could not take a folder holding it).
    let ours = c.join("runs").join("01-sgd_lr=0.2");
    std::fs::write(ours.join("notes.txt"), "mine").unwrap();
    let (ok, t) =
        run(&["compare", "--model", "linear", "--epochs", "1", "--run", "sgd:lr=0.2", "--out", s(&c), "--force"]);
    assert!(!ok && t.contains("notes.txt") && t.contains("move them away"), "{t}");
    assert!(ours.join("checkpoint.safetensors").exists() && ours.join("notes.txt").exists(), "{:?}", names(&ours));
    // The same for a file of the user's in its tensorboard/ (the clearing takes only event files).
    std::fs::remove_file(ours.join("notes.txt")).unwrap();
    std::fs::create_dir_all(ours.join("tensorboard")).unwrap();
    std::fs::write(ours.join("tensorboard").join("mine.txt"), "mine").unwrap();
    let (ok, t) =
        run(&["compare", "--model", "linear", "--epochs", "1", "--run", "sgd:lr=0.2", "--out", s(&c), "--force"]);
    assert!(!ok && t.contains("tensorboard/mine.txt"), "{t}");
    assert!(ours.join("checkpoint.safetensors").exists(), "{:?}", names(&ours));
    // A sweep resumed keeps its settings.
    let sw = d.join("sw");
    assert!(
        run(&[
            "sweep",
            "--model",
            "linear",
            "--param",
            "lr=loguniform:1e-3..1e-1",
            "--objective",
            "val_loss",
            "--trials",
            "1",
            "--epochs",
            "1",
            "--out",
            s(&sw)
        ])
        .0
    );
    let (ok, t) = run(&["sweep", "--resume", s(&sw), "--trials", "8"]);
    assert!(!ok && t.contains("--trials"), "{t}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// What only looks like descent's is not taken for it: a user's files named like a temporary
/// file (`.thesis.tmp`, `weights.safetensors.tmp`) make a folder the user's, not an empty one; a
/// folder of a `table.md` and a `table.csv` (or a `sweep.json`) without a marker is not an old
/// landscape (sweep) folder for `--force` to overwrite or `--resume` to mark; a link in a
/// compare's `runs/` is neither followed nor removed; a sweep whose trial folder holds a run of
/// another command is refused before its results are cleared; lr-find with an optimizer whose
/// rate it cannot ramp is refused before its folder is made.
#[test]
fn force_and_resume_take_only_what_descent_marked() {
    let d = fresh("marked");
    let u = d.join("u");
    std::fs::create_dir_all(&u).unwrap();
    std::fs::write(u.join(".thesis.tmp"), "years of work").unwrap();
    std::fs::write(u.join("weights.safetensors.tmp"), "w").unwrap();
    for force in [false, true] {
        let mut cmd = vec!["lr-find", "--model", "linear", "--num-steps", "10", "--out", s(&u)];
        if force {
            cmd.push("--force");
        }
        let (ok, t) = run(&cmd);
        assert!(!ok && t.contains("not a folder descent wrote"), "{t}");
        assert_eq!(names(&u), vec![".thesis.tmp", "weights.safetensors.tmp"]);
    }
    let r = d.join("r");
    std::fs::create_dir_all(&r).unwrap();
    std::fs::write(r.join("table.md"), "mine").unwrap();
    std::fs::write(r.join("table.csv"), "a,b").unwrap();
    let (ok, t) =
        run(&["landscape", "--function", "beale", "--run", "adam:lr=0.05", "--steps", "10", "--out", s(&r), "--force"]);
    assert!(!ok && t.contains("not a folder descent wrote"), "{t}");
    assert_eq!(read(&r.join("table.md")), "mine");
    let w = d.join("w");
    std::fs::create_dir_all(&w).unwrap();
    std::fs::write(w.join("sweep.json"), r#"{"method":"bayes"}"#).unwrap();
    let (ok, t) = run(&["sweep", "--resume", s(&w)]);
    assert!(!ok && t.contains("has no descent.json"), "{t}");
    assert_eq!(names(&w), vec!["sweep.json"], "the refused resume wrote into the folder");
    // A link in a compare's runs/ to one of its runs.
    let c = d.join("c");
    let cmp = ["compare", "--model", "linear", "--epochs", "1", "--run", "sgd", "--run", "adam", "--out", s(&c)];
    assert!(run(&cmp).0);
    std::os::unix::fs::symlink("02-adam", c.join("runs/00-best")).unwrap();
    let (ok, t) = run(&[&cmp[..], &["--force"]].concat());
    assert!(ok, "{t}");
    assert!(c.join("runs/00-best").symlink_metadata().unwrap().file_type().is_symlink());
    assert!(c.join("runs/02-adam/checkpoint.safetensors").exists() && c.join("report.html").exists());
    // A link where one of its runs goes is refused before anything is cleared.
    let elsewhere = d.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::rename(c.join("runs/02-adam"), elsewhere.join("02-adam")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("02-adam"), c.join("runs/02-adam")).unwrap();
    let (ok, t) = run(&[&cmp[..], &["--force"]].concat());
    assert!(!ok && t.contains("a link"), "{t}");
    assert!(c.join("report.html").exists() && c.join("runs/01-sgd/checkpoint.safetensors").exists());
    // A trial folder of a sweep holding a run of `descent train`.
    let sw = d.join("sw");
    let sweep = |trials: &'static str, extra: &[&'static str]| {
        let mut v = vec![
            "sweep",
            "--model",
            "linear",
            "--epochs",
            "1",
            "--optimizer",
            "sgd",
            "--objective",
            "val_loss",
            "--param",
            "lr=loguniform:1e-3..1e-1",
            "--method",
            "random",
            "--trials",
            trials,
            "--out",
            s(&sw),
        ];
        v.extend_from_slice(extra);
        run(&v)
    };
    assert!(sweep("2", &[]).0);
    assert!(linear(&sw.join("trials/003"), &["--epochs", "1"]).0);
    let before = read(&sw.join("trials.jsonl"));
    let (ok, t) = sweep("3", &["--force"]);
    assert!(!ok && t.contains("trial 3") && t.contains("trials/003"), "{t}");
    assert_eq!(read(&sw.join("trials.jsonl")), before, "the refused sweep cleared its results");
    // A trial's folder that is a link: refused the same way.
    std::fs::remove_dir_all(sw.join("trials/003")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, sw.join("trials/003")).unwrap();
    let (ok, t) = sweep("3", &["--force"]);
    assert!(!ok && t.contains("trial 3") && t.contains("a link"), "{t}");
    assert_eq!(read(&sw.join("trials.jsonl")), before, "the refused sweep cleared its results");
    // lr-find with torch Rprop, whose rate a schedule cannot set.
    let l = d.join("l");
    let (ok, t) = run(&["lr-find", "--model", "linear", "--optimizer", "rprop", "--num-steps", "30", "--out", s(&l)]);
    assert!(!ok && t.contains("rprop") && t.contains("learning rate"), "{t}");
    assert!(!l.exists(), "{:?}", names(&l));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn residual_and_plain_cnns_train_and_resume_with_their_running_statistics() {
    let d = fresh("resnet");
    let data = d.join("data");
    write_idx_set(&data, 96, 32, 28, 28);
    let go = |out: &Path, model: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            model,
            "--data",
            s(&data),
            "--batch-size",
            "16",
            "--threads",
            "2",
            "--out",
            s(out),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let (a, b) = (d.join("a"), d.join("b"));
    assert!(go(&a, "resnet", &["--steps", "9", "--epochs", "2", "--log-grad-norms"]).0);
    // Cut inside the second epoch, resumed: the same steps bit for bit (batch norm's running
    // statistics travel in the checkpoint).
    assert!(go(&b, "resnet", &["--steps", "4", "--epochs", "2", "--log-grad-norms"]).0);
    let (ok, t) = run(&["train", "--resume", s(&b), "--steps", "9"]);
    assert!(ok, "{t}");
    assert_eq!(read(&a.join("steps.csv")), read(&b.join("steps.csv")));
    let norms = read(&a.join("grad_norms.jsonl"));
    assert_eq!(norms.lines().count(), 9);
    assert_eq!(norms, read(&b.join("grad_norms.jsonl")));
    // A residual and a plain network side by side: the per-layer gradient chart is drawn.
    let c = d.join("cmp");
    let (ok, t) = run(&[
        "compare",
        "--data",
        s(&data),
        "--batch-size",
        "16",
        "--threads",
        "2",
        "--steps",
        "3",
        "--log-grad-norms",
        "--run",
        "adam:model=resnet,depth=10",
        "--run",
        "adam:model=plain,depth=10",
        "--out",
        s(&c),
    ]);
    assert!(ok, "{t}");
    assert!(
        c.join("grad_norm_by_layer.png").is_file() && c.join("grad_norm_by_layer.svg").is_file(),
        "{:?}",
        names(&c)
    );
    assert_eq!(read(&a.join("metrics.csv")).lines().count(), read(&b.join("metrics.csv")).lines().count());
    let (ok, t) = go(&d.join("p"), "plain", &["--depth", "10", "--steps", "2"]);
    assert!(ok, "{t}");
    let (ok, t) = go(&d.join("q"), "resnet", &["--depth", "7"]);
    // The flag at fault alone: the width was not given.
    assert!(!ok && t.contains("--depth 7") && t.contains("4n + 2") && !t.contains("--width"), "{t}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_run_whose_marker_was_deleted_is_not_resumed_and_the_message_says_why() {
    let d = fresh("marker");
    let r = d.join("run");
    let (ok, t) = linear(&r, &["--epochs", "1"]);
    assert!(ok, "{t}");
    std::fs::remove_file(r.join("descent.json")).unwrap();
    let before = names(&r);
    common::one_line_error(
        &["train", "--resume", s(&r), "--epochs", "2"],
        &["has no descent.json", "marker was deleted", "new folder (--out)"],
    );
    assert_eq!(names(&r), before, "the refused resume changed the folder");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn resuming_after_step_rows_were_lost_warns_of_the_gap() {
    let d = fresh("gap");
    let r = d.join("run");
    let (ok, t) = linear(&r, &["--epochs", "1"]);
    assert!(ok, "{t}");
    let steps = r.join("steps.jsonl");
    let rows: Vec<String> = read(&steps).lines().map(String::from).collect();
    let n = rows.len();
    std::fs::write(&steps, rows[..10].join("\n") + "\n").unwrap();
    let (ok, t) = run(&["train", "--resume", s(&r), "--epochs", "2"]);
    assert!(ok, "{t}");
    assert!(t.contains("warning:") && t.contains(&format!("rows of steps 11–{n} are missing")), "{t}");
    // An intact run resumes without it.
    let (ok, t) = run(&["train", "--resume", s(&r), "--epochs", "3"]);
    assert!(ok && !t.contains("warning"), "{t}");
    // An emptied metrics.jsonl, and a line of steps.jsonl that no longer reads as a step row.
    std::fs::write(r.join("metrics.jsonl"), "").unwrap();
    let (ok, t) = run(&["train", "--resume", s(&r), "--epochs", "4"]);
    assert!(ok && t.contains("metrics.jsonl ends at epoch 0") && t.contains("rows of epochs 1–3 are missing"), "{t}");
    let rows: Vec<String> = read(&steps).lines().map(String::from).collect();
    let edited = rows[5].replace("\"loss\":", "\"loss\":\"x\",");
    assert_ne!(edited, rows[5]);
    let text = [&rows[..5], &[edited], &rows[6..]].concat().join("\n") + "\n";
    std::fs::write(&steps, text).unwrap();
    let (ok, t) = run(&["train", "--resume", s(&r), "--epochs", "5"]);
    assert!(ok && t.contains("steps.jsonl: 1 line(s) that do not read as its records"), "{t}");
    // A cut steps.csv is rebuilt from steps.jsonl: the two agree row for row after the resume.
    let csv = r.join("steps.csv");
    let text = read(&csv);
    std::fs::write(&csv, &text[..text.len() / 3]).unwrap();
    let (ok, t) = run(&["train", "--resume", s(&r), "--epochs", "6"]);
    assert!(ok, "{t}");
    let (csv_rows, jsonl_rows) = (read(&csv), read(&steps));
    assert_eq!(csv_rows.lines().count(), jsonl_rows.lines().count() + 1, "header and one row per step");
    for (c, j) in csv_rows.lines().skip(1).zip(jsonl_rows.lines()) {
        let step: serde_json::Value = serde_json::from_str(j).unwrap();
        assert_eq!(c.split(',').next().unwrap(), step["step"].to_string());
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// A resume given the run's data by another path (absolute for relative) goes on; a run read
/// from another working directory says where its relative data path was looked for.
#[test]
fn a_resume_takes_the_same_data_by_another_path() {
    let d = fresh("elsewhere");
    let r = d.join("run");
    let (ok, t) = run(&["train", "--model", "mlp", "--steps", "3", "--threads", "1", "--out", s(&r)]);
    assert!(ok, "{t}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let abs = root.join("data/mnist");
    let (ok, t) = run(&["train", "--resume", s(&r), "--steps", "5", "--threads", "1", "--data", s(&abs)]);
    assert!(ok, "{t}");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_descent"))
        .args(["evaluate", s(&r), "--threads", "1"])
        .current_dir(&d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("relative to the working directory"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// Paths that are not what a command takes are named as what they are: a file where a folder is
/// expected, a link to nothing as a new run's folder, a pruned model's folder given to ensemble.
#[test]
fn paths_of_the_wrong_kind_are_named_as_what_they_are() {
    let d = fresh("kinds");
    let r = d.join("run");
    let (ok, t) = linear(&r, &["--steps", "3"]);
    assert!(ok, "{t}");
    let file = r.join("metrics.jsonl");
    common::one_line_error(&["plot", s(&file), "--out", s(&d.join("p"))], &["a file, not a folder"]);
    common::one_line_error(&["evaluate", s(&file)], &["a file, not a folder"]);
    #[cfg(unix)]
    {
        let link = d.join("link");
        std::os::unix::fs::symlink(d.join("nowhere"), &link).unwrap();
        common::one_line_error(
            &["train", "--model", "linear", "--steps", "2", "--out", s(&link)],
            &["a link to", "nowhere", "does not exist"],
        );
        assert!(!d.join("nowhere").exists());
    }
    let m = d.join("mlp");
    let (ok, t) = run(&["train", "--model", "mlp", "--steps", "3", "--threads", "1", "--out", s(&m)]);
    assert!(ok, "{t}");
    let pruned = d.join("pruned");
    let (ok, t) = run(&["prune", s(&m), "--method", "l1_unstructured", "--amount", "0.3", "--out", s(&pruned)]);
    assert!(ok, "{t}");
    common::one_line_error(&["ensemble", s(&m), s(&pruned)], &["output of descent prune or quantize"]);
    std::fs::remove_dir_all(&d).unwrap();
}

/// A setting TOML cannot hold (a null: AdaFactor's `betas: [null, β₂]` turns its momentum off)
/// is honoured: the run trains and resumes from config.json, and only config.toml, which cannot
/// say it, is left out, with one warning. (It used to fail after claiming the folder.)
#[test]
fn a_null_setting_trains_and_resumes_without_config_toml() {
    let d = fresh("null-setting");
    let out = d.join("run");
    let h = r#"{"betas": [null, 0.999], "relative_step": false, "lr": 0.01}"#;
    let (ok, t) = linear(&out, &["--optimizer", "po.adafactor", "--hparams", h, "--epochs", "1"]);
    assert!(ok, "{t}");
    let warnings: Vec<&str> = t.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{t}");
    assert!(warnings[0].contains("config.toml not written") && warnings[0].contains("null"), "{t}");
    assert!(!out.join("config.toml").exists());
    let config: serde_json::Value = serde_json::from_str(&read(&out.join("config.json"))).unwrap();
    assert_eq!(config["hparams"]["betas"], serde_json::json!([null, 0.999]));
    let (ok, t) = run(&["train", "--resume", s(&out), "--epochs", "2", "--threads", "1"]);
    assert!(ok, "{t}");
    assert!(read(&out.join("metrics.csv")).lines().count() >= 3, "{t}");
}

/// Every file of a folder but its lock, by name.
fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.ends_with(".descent.lock"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

/// A resume refused once its checkpoint is in hand (here the training set at the run's data path
/// is not the one it was trained on, and no longer has the batch the checkpoint was taken after)
/// leaves the run folder as it was: its metric files are not cut back, its config not rewritten
/// with the refused `--steps`. Evaluating the run on that data is refused too.
#[test]
fn a_refused_resume_leaves_the_run_folder_as_it_was() {
    let d = fresh("refused-resume");
    let data = d.join("data");
    write_idx_set(&data, 200, 40, 28, 28);
    let r = d.join("run");
    // 7 batches of 32 an epoch: 10 steps end after batch 3 of epoch 2.
    let (ok, t) = run(&[
        "train",
        "--model",
        "mlp",
        "--epochs",
        "2",
        "--steps",
        "10",
        "--batch-size",
        "32",
        "--threads",
        "1",
        "--data",
        s(&data),
        "--out",
        s(&r),
    ]);
    assert!(ok, "{t}");
    let before = files_of(&r);
    assert!(before.iter().any(|(n, b)| n == "metrics.jsonl" && !b.is_empty()));
    write_idx_set(&data, 64, 40, 28, 28);
    let (ok, t) = run(&["train", "--resume", s(&r), "--steps", "12"]);
    assert!(!ok && t.contains("not the MNIST data the run's checkpoint was trained on"), "{t}");
    assert!(before == files_of(&r), "the refused resume changed the folder");
    let (ok, t) = run(&["evaluate", s(&r)]);
    assert!(!ok && t.contains("not the MNIST data"), "{t}");
    // A model made from the run (before the data changed) is refused on other data too.
    let q = d.join("int8");
    write_idx_set(&data, 200, 40, 28, 28);
    let (ok, t) = run(&["quantize", s(&r), "--out", s(&q)]);
    assert!(ok, "{t}");
    write_idx_set(&data, 64, 40, 28, 28);
    let (ok, t) = run(&["evaluate", s(&q)]);
    assert!(!ok && t.contains("not the MNIST data the model was made from"), "{t}");
    // The same images again: the run resumes.
    write_idx_set(&data, 200, 40, 28, 28);
    let (ok, t) = run(&["train", "--resume", s(&r), "--steps", "12"]);
    assert!(ok, "{t}");
}

/// A 3-step MLP run `d/run` on 200 images of `d/data` (made here).
fn short_mlp_run(d: &Path) -> std::path::PathBuf {
    let (data, r) = (d.join("data"), d.join("run"));
    write_idx_set(&data, 200, 40, 28, 28);
    let flags = ["--model", "mlp", "--steps", "3", "--batch-size", "32", "--threads", "1"];
    let (ok, t) = run(&[&["train"][..], &flags, &["--data", s(&data), "--out", s(&r)]].concat());
    assert!(ok, "{t}");
    r
}

/// The commands that rebuild a run's model and data from its config.json (evaluate, prune,
/// quantize, compress-report, a distillation's teacher) read it only as the checkpoint was
/// trained with it: an edited setting (standardized inputs, a validation split) would score
/// another model on other data without a word.
#[test]
fn an_edited_config_is_refused_by_the_commands_that_read_a_run() {
    let d = fresh("edited-config");
    let r = short_mlp_run(&d);
    let (ok, t) = run(&["evaluate", s(&r)]);
    assert!(ok, "{t}");
    let cfg = r.join("config.json");
    let text = read(&cfg);
    assert!(text.contains("\"normalize\": false"), "{text}");
    std::fs::write(&cfg, text.replace("\"normalize\": false", "\"normalize\": true")).unwrap();
    for args in [
        vec!["evaluate", s(&r)],
        vec!["prune", s(&r), "--method", "l1_unstructured", "--amount", "0.5", "--out", s(&d.join("pruned"))],
        vec!["quantize", s(&r), "--out", s(&d.join("int8"))],
        vec!["compress-report", s(&r)],
    ] {
        let (ok, t) = run(&args);
        assert!(!ok && t.contains("config.json was changed"), "{args:?}: {t}");
    }
    assert!(!d.join("pruned").exists() && !d.join("int8").exists());
}

/// A folder of `descent quantize` or `descent prune` is read as it was made: its model file holds
/// the compress.json it was written with, and an edited one (standardized inputs, another model)
/// is refused by the commands that read the folder.
#[test]
fn an_edited_compress_record_is_refused() {
    let d = fresh("edited-compress");
    let r = short_mlp_run(&d);
    let (q, p) = (d.join("int8"), d.join("pruned"));
    for args in [
        vec!["quantize", s(&r), "--out", s(&q)],
        vec!["prune", s(&r), "--method", "l1_unstructured", "--amount", "0.5", "--out", s(&p)],
    ] {
        let (ok, t) = run(&args);
        assert!(ok, "{args:?}: {t}");
    }
    for (dir, from, to) in
        [(&q, "\"normalize\": false", "\"normalize\": true"), (&p, "\"model\": \"mlp\"", "\"model\": \"lenet\"")]
    {
        let (ok, t) = run(&["evaluate", s(dir)]);
        assert!(ok, "{t}");
        let info = dir.join("compress.json");
        let text = read(&info);
        assert!(text.contains(from), "{text}");
        std::fs::write(&info, text.replace(from, to)).unwrap();
        for cmd in ["evaluate", "compress-report"] {
            let (ok, t) = run(&[cmd, s(dir)]);
            assert!(!ok && t.contains("compress.json") && t.contains("changed after"), "{cmd} {}: {t}", dir.display());
        }
    }
}

/// A run folder whose checkpoint is gone after its epochs were recorded, or is a link to nothing,
/// is told as such, not as a run that stopped before its first epoch (whose advice, `--force`,
/// would delete the run).
#[test]
fn a_lost_checkpoint_is_named_as_lost() {
    let d = fresh("lost-checkpoint");
    let data = d.join("data");
    write_idx_set(&data, 100, 20, 28, 28);
    let r = d.join("run");
    let (ok, t) = run(&[
        "train",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--threads",
        "1",
        "--data",
        s(&data),
        "--out",
        s(&r),
    ]);
    assert!(ok, "{t}");
    let ck = r.join("checkpoint.safetensors");
    std::fs::remove_file(&ck).unwrap();
    for cmd in [vec!["evaluate", s(&r)], vec!["train", "--resume", s(&r), "--epochs", "2"]] {
        let (ok, t) = run(&cmd);
        assert!(!ok && t.contains("deleted or moved") && !t.contains("--force"), "{cmd:?}: {t}");
    }
    std::os::unix::fs::symlink(d.join("nowhere"), &ck).unwrap();
    let (ok, t) = run(&["evaluate", s(&r)]);
    assert!(!ok && t.contains("a link to") && t.contains("nowhere"), "{t}");
    // Stopped while writing its first checkpoint (after the epoch's metrics row): named, with the
    // command that trains it again, which works.
    std::fs::remove_file(&ck).unwrap();
    // (The name descent writes it under: `.checkpoint.safetensors.tmp` and the process id.)
    let partial = r.join(".checkpoint.safetensors.tmp31337");
    std::fs::write(&partial, "partial").unwrap();
    let (ok, t) = run(&["train", "--resume", s(&r), "--epochs", "2"]);
    assert!(!ok && t.contains("stopped while writing its first one") && t.contains("--force"), "{t}");
    let config = r.join("config.toml");
    let (ok, t) = run(&["train", "--config", s(&config), "--out", s(&r), "--force"]);
    assert!(ok && ck.exists() && !partial.exists(), "{t}");
    // Without its settings (a --force stopped while clearing): named, not the OS error.
    std::fs::remove_file(r.join("config.json")).unwrap();
    let (ok, t) = run(&["train", "--resume", s(&r), "--epochs", "2"]);
    assert!(!ok && t.contains("no config.json, so nothing to resume") && t.lines().count() <= 2, "{t}");
}

/// Under an address-space limit (`ulimit -v`) a step that cannot fit is refused by the memory
/// check, naming the batch, instead of aborting on an allocation with a backtrace.
#[test]
fn a_memory_limit_of_the_process_is_counted() {
    let bin = env!("CARGO_BIN_EXE_descent");
    let d = fresh("ulimit");
    let script = format!(
        "ulimit -v 2000000 && exec {bin} train --model resnet --steps 1 --batch-size 8192 --threads 1 --out {}",
        d.join("r").display()
    );
    let o = std::process::Command::new("sh").args(["-c", &script]).output().unwrap();
    let t = text(&o);
    assert!(!o.status.success() && t.contains("--batch-size 8192") && t.contains("of memory available"), "{t}");
    assert!(!t.contains("backtrace") && !d.join("r").exists(), "{t}");
}

/// Under a limit too small for the data itself, every command that reads MNIST says so in one
/// line, naming the file and the memory, instead of aborting on the allocation.
#[test]
fn a_memory_limit_too_small_for_the_data_is_an_error() {
    let bin = env!("CARGO_BIN_EXE_descent");
    let d = fresh("ulimit-data");
    for cmd in [
        "train --model mlp --epochs 1 --batch-size 2048 --threads 1 --out",
        "bench train --model mlp --batches 2 --threads 1 #",
    ] {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let script = format!("cd {root} && ulimit -v 250000 && exec {bin} {cmd} {}", d.join("r").display());
        let o = std::process::Command::new("sh").args(["-c", &script]).output().unwrap();
        let t = text(&o);
        assert!(!o.status.success() && t.contains("not enough memory") && t.contains("MB"), "{cmd}: {t}");
        assert!(!t.contains("memory allocation of") && !t.contains("backtrace"), "{cmd}: {t}");
    }
}

/// Counts that follow the data and `--accumulate`: `lr-find` takes `--num-steps` optimizer steps
/// (each of `--accumulate` micro-batches), `bench optimizers` spreads `--evals-per-epoch` over
/// the epoch of its own data, and `compress-report` times its batches of 256 on a test set of
/// fewer images (it divided by zero at 256).
#[test]
fn step_counts_follow_the_data_and_accumulation() {
    let d = fresh("counts");
    let data = d.join("data");
    write_idx_set(&data, 640, 200, 28, 28);
    let lrf = d.join("lrf");
    let (ok, t) = run(&[
        "lr-find",
        "--model",
        "mlp",
        "--data",
        s(&data),
        "--batch-size",
        "50",
        "--accumulate",
        "4",
        "--num-steps",
        "12",
        "--threads",
        "1",
        "--out",
        s(&lrf),
    ]);
    assert!(ok && t.contains("12 steps") && !t.contains("diverged") && t.contains("× 4 accumulated"), "{t}");
    assert_eq!(read(&lrf.join("lr_find.csv")).lines().count(), 13, "a header and 12 steps");

    let bench = d.join("bench");
    let bench_args = [
        "bench",
        "optimizers",
        "--run",
        "adam",
        "--grid-points",
        "1",
        "--seeds",
        "1",
        "--model",
        "mlp",
        "--data",
        s(&data),
        "--validation",
        "140",
        "--batch-size",
        "50",
        "--accumulate",
        "2",
        "--evals-per-epoch",
        "5",
        "--epochs",
        "1",
        "--target",
        "5",
        "--threads",
        "1",
        "--out",
        s(&bench),
    ];
    let (ok, t) = run(&bench_args);
    assert!(ok, "{t}");
    // 500 training images in steps of 100: 5 steps, an evaluation after each.
    let record: serde_json::Value =
        serde_json::from_str(read(&bench.join("runs.jsonl")).lines().next().unwrap()).unwrap();
    let steps: Vec<u64> = record["curve"].as_array().unwrap().iter().map(|p| p[0].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5], "{record}");
    // --force replaces the benchmark's own runs (each was refused as "another command's").
    let (ok, t) = run(&[&bench_args[..], &["--force"]].concat());
    assert!(ok && !t.contains("failed"), "{t}");
    // Data that does not load is refused before --force clears the folder.
    let before = names(&bench);
    let missing = d.join("no-data");
    let mut bad = bench_args.to_vec();
    bad[11] = s(&missing);
    let (ok, t) = run(&[&bad[..], &["--force"]].concat());
    assert!(!ok && t.contains("no-data") && t.contains("MNIST"), "{t}");
    assert_eq!(names(&bench), before, "{t}");

    let r = d.join("run");
    assert!(run(&["train", "--model", "mlp", "--data", s(&data), "--steps", "5", "--threads", "1", "--out", s(&r)]).0);
    let (ok, t) = run(&["compress-report", s(&r), "--rounds", "1", "--threads", "1"]);
    assert!(ok && t.contains("samp/s"), "{t}");
    let (ok, t) = run(&["compress-report", s(&r), &format!("{}/", s(&r)), "--rounds", "1"]);
    assert!(!ok && t.contains("given twice"), "{t}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// A run folder another command is writing, before its first checkpoint: the commands that read
/// a run say it is in progress (they said it had stopped, or named a missing file).
#[test]
fn a_run_in_progress_is_named_as_such() {
    let d = fresh("inprogress");
    let r = d.join("run");
    assert!(run(&["train", "--model", "mlp", "--steps", "5", "--threads", "1", "--out", s(&r)]).0);
    std::fs::remove_file(r.join("checkpoint.safetensors")).unwrap();
    let lock = std::fs::OpenOptions::new().write(true).open(r.join(".descent.lock")).unwrap();
    lock.lock().unwrap();
    for args in [
        vec!["evaluate", s(&r)],
        vec!["sample", s(&r)],
        vec!["prune", s(&r), "--method", "l1_unstructured", "--amount", "0.5", "--out", s(&d.join("p"))],
    ] {
        let (ok, t) = run(&args);
        assert!(!ok && t.contains("still in progress") && t.lines().count() <= 2, "{args:?}: {t}");
    }
    drop(lock);
    let (ok, t) = run(&["evaluate", s(&r)]);
    assert!(!ok && t.contains("deleted or moved"), "{t}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// A resumed run takes `--hparams` that agree with its settings as a new run records them (gpt's
/// AdamW arguments over the given ones), and refuses a run whose config.toml was edited, naming the
/// setting and keeping the edit, since it would continue from config.json and write over it.
#[test]
fn resume_reads_hparams_as_a_new_run_and_keeps_an_edited_config_toml() {
    let d = fresh("toml-edit");
    let run_dir = d.join("r");
    let tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--eval-iters", "1"];
    let mut args = vec!["train", "--model", "gpt", "--threads", "1", "--steps", "2", "--eval-interval", "2"];
    args.extend(tiny);
    args.extend(["--out", s(&run_dir)]);
    let (ok, t) = run(&args);
    assert!(ok, "{t}");
    let (ok, t) = run(&["train", "--resume", s(&run_dir), "--steps", "3", "--hparams", r#"{"weight_decay": 0.1}"#]);
    assert!(ok, "the recipe's own weight decay: {t}");
    let (ok, t) = run(&["train", "--resume", s(&run_dir), "--steps", "4", "--hparams", r#"{"weight_decay": 0.2}"#]);
    assert!(!ok && t.contains("contradicts"), "{t}");
    let toml = run_dir.join("config.toml");
    let edited = read(&toml).replace("\nlr = 0.001\n", "\nlr = 0.5\n");
    assert!(edited.contains("lr = 0.5"), "{edited}");
    std::fs::write(&toml, &edited).unwrap();
    let (ok, t) = run(&["train", "--resume", s(&run_dir), "--steps", "4"]);
    assert!(!ok && t.contains("config.toml: edited") && t.contains("`lr`"), "{t}");
    assert_eq!(read(&toml), edited, "the edit is kept");
}
