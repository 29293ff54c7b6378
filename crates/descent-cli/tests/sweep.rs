//! `descent sweep` as a user runs it, on the linear regression (seconds per trial).

use std::path::Path;
mod common;

use common::{csv_rows, descent, out, run_err, run_ok};

fn trials(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("trials.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const BASE: &[&str] = &["sweep", "--model", "linear", "--optimizer", "sgd", "--threads", "1"];

/// A sweep killed midway (trials.jsonl cut after three trials and a half-written fourth line)
/// resumes from its folder: the finished trials are not run again, and the rest are the trials an
/// uninterrupted sweep ran, value for value. The best config file then trains, with `descent
/// train --config`, to the objective the sweep recorded for it.
#[test]
fn resume_skips_finished_trials_and_the_best_config_trains_to_its_objective() {
    let (full, cut) = (out("full"), out("cut"));
    let mut args: Vec<&str> = BASE.to_vec();
    args.extend([
        "--objective",
        "val_loss",
        "--param",
        "lr=loguniform:1e-3..0.3",
        "--param",
        "momentum=uniform:0..0.9",
        "--trials",
        "6",
        "--method",
        "tpe",
        "--startup",
        "3",
    ]);
    let mut a = args.clone();
    a.extend(["--out", full.to_str().unwrap()]);
    run_ok(&a);
    let mut a = args.clone();
    a.extend(["--out", cut.to_str().unwrap()]);
    run_ok(&a);
    let text = std::fs::read_to_string(cut.join("trials.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(cut.join("trials.jsonl"), format!("{}\n{}\n{}\n{}", lines[0], lines[1], lines[2], &lines[3][..40]))
        .unwrap();
    let resumed = run_ok(&["sweep", "--resume", cut.to_str().unwrap()]);
    assert!(resumed.contains("3 of 6 trials finished"), "{resumed}");
    for k in 1..=3 {
        assert!(!resumed.contains(&format!("trial {k}/6:")), "trial {k} ran again: {resumed}");
    }
    let (a, b) = (trials(&full), trials(&cut));
    assert_eq!(b.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x["values"], &x["loss"], &x["status"]), (&y["values"], &y["loss"], &y["status"]));
    }
    // The best config as written trains to the recorded objective.
    let best = a.iter().min_by(|x, y| x["loss"].as_f64().unwrap().total_cmp(&y["loss"].as_f64().unwrap())).unwrap();
    let again = out("again");
    run_ok(&[
        "train",
        "--config",
        full.join("best.toml").to_str().unwrap(),
        "--threads",
        "1",
        "--out",
        again.to_str().unwrap(),
    ]);
    let last: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(again.join("metrics.jsonl")).unwrap().lines().last().unwrap())
            .unwrap();
    assert_eq!(last["test_loss"].as_f64(), best["loss"].as_f64());
    let table = std::fs::read_to_string(full.join("table.md")).unwrap();
    assert!(
        table.lines().nth(2).unwrap().starts_with(&format!("| {} |", best["trial"].as_u64().unwrap() + 1)),
        "{table}"
    );
    for pic in ["objective", "curves", "param_lr", "param_momentum"] {
        let img = image::open(full.join(format!("{pic}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (960, 600));
    }
    // `descent plot` redraws a sweep folder's trials.
    let pics = out("sweep-plot");
    let text = run_ok(&["plot", full.to_str().unwrap(), "--out", pics.to_str().unwrap()]);
    assert!(text.contains("6 runs drawn"), "{text}");
    // Files edited by hand are refused on resume, not mixed into the table: settings changed
    // after trials ran, a trial numbered twice or beyond the sweep's, a value outside the space,
    // a status the sweep does not write.
    let lines: Vec<String> =
        std::fs::read_to_string(full.join("trials.jsonl")).unwrap().lines().map(String::from).collect();
    let json = std::fs::read_to_string(full.join("sweep.json")).unwrap();
    let edits: Vec<(String, String, &str)> = vec![
        (json.replace("\"val_loss\"", "\"test_loss\""), lines[0].clone(), "other settings"),
        (json.clone(), lines[0].replace("\"trial\":0", "\"trial\":9"), "not one of this sweep's 6 trials"),
        (json.clone(), format!("{}\n{}", lines[0], lines[0]), "numbered twice"),
        (json.clone(), lines[0].replace("\"status\":\"complete\"", "\"status\":\"bogus\""), "status `bogus`"),
        (json.clone(), lines[0].replace("\"lr\":", "\"lr\":55,\"x\":"), "sets 3 values"),
    ];
    for (k, (sweep_json, trial_lines, needle)) in edits.into_iter().enumerate() {
        let edited = out(&format!("edited-{k}"));
        std::fs::create_dir_all(edited.join("trials")).unwrap();
        std::fs::copy(full.join("descent.json"), edited.join("descent.json")).unwrap();
        std::fs::write(edited.join("sweep.json"), sweep_json).unwrap();
        std::fs::write(edited.join("trials.jsonl"), trial_lines + "\n").unwrap();
        let e = run_err(&["sweep", "--resume", edited.to_str().unwrap()]);
        assert!(e.contains(needle), "{needle}: {e}");
    }
}

/// A grid runs exactly its points; a diverging trial is recorded as failed and the sweep goes on.
#[test]
fn a_grid_runs_every_point_and_a_diverging_trial_is_recorded_as_failed() {
    let dir = out("grid");
    let mut a: Vec<&str> = BASE.to_vec();
    a.extend([
        "--objective",
        "val_loss",
        "--method",
        "grid",
        "--param",
        "lr=choice:0.05|1e30",
        "--param",
        "momentum=uniform:0..0.5",
        "--grid-points",
        "2",
        "--epochs",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ]);
    run_ok(&a);
    let t = trials(&dir);
    assert_eq!(t.len(), 4);
    let values: Vec<(f64, f64)> =
        t.iter().map(|x| (x["values"]["lr"].as_f64().unwrap(), x["values"]["momentum"].as_f64().unwrap())).collect();
    for point in [(0.05, 0.0), (0.05, 0.5), (1e30, 0.0), (1e30, 0.5)] {
        assert!(values.contains(&point), "{values:?}");
    }
    let failed: Vec<&serde_json::Value> =
        t.iter().filter(|x| x["status"].as_str().unwrap().starts_with("failed")).collect();
    assert_eq!(failed.len(), 2, "{t:?}");
    assert!(failed.iter().all(|x| x["status"].as_str().unwrap().contains("step")));
    // A failed trial's infinite loss is written so that it reads back: the sweep resumes (and,
    // every point done, runs nothing again).
    assert!(failed.iter().all(|x| x["loss"] == "inf"), "{failed:?}");
    let resumed = run_ok(&["sweep", "--resume", dir.to_str().unwrap()]);
    assert_eq!(trials(&dir), t, "{resumed}");
    assert!(std::fs::read_to_string(dir.join("best.toml")).unwrap().contains("lr = 0.05"));
    // table.csv holds one row a trial, with as many fields as its header and each status whole
    // (a failure's message may hold commas or quotes).
    let header = std::fs::read_to_string(dir.join("table.csv")).unwrap().lines().next().unwrap().to_string();
    let columns: Vec<&str> = header.split(',').collect();
    let status = columns.iter().position(|c| *c == "status").unwrap();
    let rows = csv_rows(&dir.join("table.csv"));
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!(r.len(), columns.len(), "{r:?}");
        assert!(t.iter().any(|x| x["status"].as_str().unwrap() == r[status]), "{r:?}");
    }
}

/// A sweep none of whose trials finished fails (as a comparison of failed runs does), after its
/// table says how each failed.
#[test]
fn a_sweep_whose_every_trial_failed_fails() {
    let dir = out("all-failed");
    let mut a: Vec<&str> = BASE.to_vec();
    a.extend(["--objective", "val_loss", "--method", "grid", "--param", "lr=choice:1e30|1e31", "--epochs", "1"]);
    a.extend(["--out", dir.to_str().unwrap()]);
    let e = run_err(&a);
    assert!(e.contains("every trial failed") && e.contains("step"), "{e}");
    let table = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert_eq!(table.matches("failed").count(), 2, "{table}");
    assert!(!table.contains("| inf |") && !table.contains("-inf"), "{table}");
}

/// ASHA stops trials at rungs: some are pruned and the sweep spends less than every trial run to
/// the end.
#[test]
fn asha_prunes_and_saves_steps() {
    let dir = out("asha");
    let mut a: Vec<&str> = BASE.to_vec();
    a.extend([
        "--objective",
        "val_loss",
        "--param",
        "lr=loguniform:1e-4..0.3",
        "--method",
        "random",
        "--pruner",
        "asha",
        "--trials",
        "9",
        "--epochs",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let text = run_ok(&a);
    let t = trials(&dir);
    let pruned = t.iter().filter(|x| x["status"] == "pruned").count();
    assert!(pruned >= 3, "{pruned} pruned of {}: {text}", t.len());
    let spent: u64 = t.iter().map(|x| x["steps"].as_u64().unwrap()).sum();
    let full = 9 * t.iter().map(|x| x["steps"].as_u64().unwrap()).max().unwrap();
    assert!(spent * 10 < full * 7, "{spent} of {full}");
    assert!(text.contains("steps spent"), "{text}");
    // A pruned trial's folder holds the steps it took.
    for x in t.iter().filter(|x| x["status"] == "pruned") {
        let steps = dir.join(format!("trials/{:03}/steps.jsonl", x["trial"].as_u64().unwrap() + 1));
        let lines = std::fs::read_to_string(&steps).unwrap_or_default().lines().count() as u64;
        assert_eq!(lines, x["steps"].as_u64().unwrap(), "{}", steps.display());
    }
}

#[test]
fn bad_spaces_and_budgets_are_named() {
    let dir = out("bad");
    for (extra, needles) in [
        (vec![], vec!["empty search space"]),
        (vec!["--param", "lr=loguniform:0.1..0.001"], vec!["lr", "inverted"]),
        (vec!["--param", "momentom=uniform:0..0.9"], vec!["momentom", "momentum"]),
        (vec!["--param", "lr=loguniform:1e-3..0.1", "--trials", "0"], vec!["--trials 0"]),
        (vec!["--param", "lr=loguniform:1e-3..0.1", "--method", "bayes"], vec!["bayes", "tpe"]),
        (vec!["--param", "lr=loguniform:1e-3..0.1", "--objective", "f1"], vec!["f1", "val_accuracy"]),
        (vec!["--param", "lr=loguniform:1e-3..0.1", "--objective", "val_accuracy"], vec!["val_accuracy", "val_loss"]),
        (vec!["--param", "lr=uniform:-1e308..1e308"], vec!["lr", "wider than a double"]),
        (vec!["--param", "lr=loguniform:1e-3..0.1", "--method", "grid", "--trials", "10"], vec!["grid", "--trials 10"]),
        (vec!["--param", "batch_size=choice:8|100000"], vec!["batch_size", "100000", "training samples"]),
        // The dimension at fault is named with the one at its extreme.
        (
            vec!["--patience", "1", "--param", "lr=loguniform:1e-3..0.1", "--param", "epochs=int:1..3"],
            vec!["`epochs` = 1", "--patience 1"],
        ),
        // A length given fixed and searched, which no trial would read without ASHA's rungs.
        (
            vec!["--epochs", "3", "--param", "lr=loguniform:1e-3..0.1", "--param", "epochs=int:1..3"],
            vec!["--param epochs", "--epochs", "asha"],
        ),
        // A null argument, which best.toml could not hold.
        (vec!["--hparams", r#"{"foreach": null}"#, "--param", "lr=loguniform:1e-3..0.1"], vec!["`foreach`", "null"]),
    ] {
        let mut a: Vec<&str> = BASE.to_vec();
        if !extra.contains(&"--objective") {
            a.extend(["--objective", "val_loss"]);
        }
        a.extend(extra.iter().copied());
        a.extend(["--out", dir.to_str().unwrap()]);
        let o = descent().args(&a).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{a:?}");
        for n in needles {
            assert!(e.contains(n), "{a:?}: {e}");
        }
        assert!(!dir.exists(), "{a:?}: nothing written");
    }
}

/// The range test's learning rates grow exponentially from --start-lr to --end-lr, the test stops
/// once the loss diverges, and the suggestion lies where the loss fell: for SGD on the linear
/// regression (curvature about 1, so steps diverge past lr ≈ 2) between 1e-3 and 2.
#[test]
fn lr_find_sweeps_exponentially_stops_at_divergence_and_suggests() {
    let dir = out("lrfind");
    let text = run_ok(&[
        "lr-find",
        "--model",
        "linear",
        "--optimizer",
        "sgd",
        "--threads",
        "1",
        "--start-lr",
        "1e-5",
        "--end-lr",
        "1e3",
        "--num-steps",
        "400",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(text.contains("stopped: the loss diverged"), "{text}");
    let rows: Vec<Vec<f64>> = std::fs::read_to_string(dir.join("lr_find.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect();
    assert!(rows.len() < 400 && rows.len() > 100, "{}", rows.len());
    for r in &rows {
        let expected = 1e-5 * 1e8f64.powf((r[0] - 1.0) / 399.0);
        assert!((r[1] / expected - 1.0).abs() < 1e-9, "step {}: {} vs {expected}", r[0], r[1]);
    }
    let line = text.lines().find(|l| l.starts_with("suggested learning rate:")).unwrap();
    let lr: f64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!((1e-3..2.0).contains(&lr), "{line}");
    let img = image::open(dir.join("lr_find.png")).unwrap();
    assert_eq!((img.width(), img.height()), (960, 600));
    // A range so wide the loss diverges within a few steps suggests nothing from them.
    #[rustfmt::skip]
    let text = run_ok(&["lr-find", "--model", "linear", "--optimizer", "sgd", "--threads", "1", "--end-lr", "1e300",
        "--num-steps", "30", "--out", dir.to_str().unwrap(), "--force"]);
    assert!(text.contains("too few to locate") && !text.contains("suggested learning rate"), "{text}");
    let o = descent()
        .args(["lr-find", "--model", "linear", "--lr", "0.1", "--out", dir.to_str().unwrap(), "--force"])
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--start-lr"));
    // A group's own rate would stay fixed while the others are swept.
    let o = descent()
        .args(["lr-find", "--model", "mlp", "--group", "bias={\"lr\":0.1}", "--out", dir.to_str().unwrap(), "--force"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("--group bias") && e.contains("`lr`"), "{e}");
    // A folder that cannot be made fails before the test trains, not after it.
    let file = dir.join("lr_find.csv");
    let o =
        descent().args(["lr-find", "--model", "linear", "--out", file.join("sub").to_str().unwrap()]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success() && !text.contains("learning-rate range test:"), "{text}");
}

/// A trial's length is its own: a searched batch size or an accumulation changes its steps per
/// epoch, so its epochs (and the sweep's epoch budget) count its own steps, and ASHA's rungs fall
/// at the same fractions of each trial.
#[test]
fn trial_lengths_follow_their_batch_size_and_accumulation() {
    // 8 000 training samples after the 2 000 held out for val_loss.
    let dir = out("length-budget");
    let mut a: Vec<&str> = BASE.to_vec();
    a.extend(["--objective", "val_loss", "--method", "grid", "--param", "batch_size=choice:100|400|200"]);
    a.extend(["--epochs", "1", "--max-total-epochs", "1.5", "--out", dir.to_str().unwrap()]);
    let text = run_ok(&a);
    let t = trials(&dir);
    let got: Vec<(u64, f64)> =
        t.iter().map(|x| (x["steps"].as_u64().unwrap(), x["epochs"].as_f64().unwrap())).collect();
    assert_eq!(got, vec![(80, 1.0), (20, 1.0)], "{text}");
    assert!(text.contains("budget spent (2.00 epochs)") && text.contains("`batch_size` sets"), "{text}");

    let dir = out("length-accumulate");
    let mut a: Vec<&str> = BASE.to_vec();
    a.extend(["--objective", "val_loss", "--method", "grid", "--param", "lr=choice:0.01|0.02"]);
    a.extend(["--batch-size", "100", "--accumulate", "2", "--epochs", "1", "--out", dir.to_str().unwrap()]);
    let text = run_ok(&a);
    assert!(text.contains("2 trials of up to 40 steps"), "{text}");
    for x in trials(&dir) {
        assert_eq!((x["steps"].as_u64(), x["epochs"].as_f64()), (Some(40), Some(1.0)), "{text}");
    }

    let dir = out("length-asha");
    let mut a: Vec<&str> = BASE.to_vec();
    a.extend(["--objective", "val_loss", "--method", "grid", "--pruner", "asha", "--min-steps", "8"]);
    a.extend(["--param", "batch_size=choice:100|400", "--param", "lr=choice:0.001|0.05"]);
    a.extend(["--batch-size", "100", "--epochs", "2", "--out", dir.to_str().unwrap()]);
    let text = run_ok(&a);
    assert!(text.contains("rungs at steps [8, 24, 72]"), "{text}");
    for x in trials(&dir) {
        let rungs: Vec<u64> = x["rungs"].as_array().unwrap().iter().map(|r| r[0].as_u64().unwrap()).collect();
        // 160 steps at batch 100, 40 at 400: the rungs at a quarter of the steps there.
        let want: &[u64] = if x["values"]["batch_size"] == 100 { &[8, 24, 72] } else { &[2, 6, 18] };
        assert!(!rungs.is_empty() && want.starts_with(&rungs), "{x}: {text}");
        if x["status"] == "complete" {
            assert_eq!(rungs, want, "{x}");
        }
    }
}

/// A searched setting that is also given fixed (a flag, an --hparams key, the config file) is
/// refused: the search dimension overrode it in every trial without a word. (A fixed length
/// setting, `--batch-size` or `--epochs`, sets the shared plan the rungs and the budget follow.)
#[test]
fn a_searched_setting_given_fixed_is_refused() {
    let base = ["sweep", "--model", "mlp", "--trials", "2", "--out", "/nonexistent/never-written"];
    for (extra, needles) in [
        (vec!["--param", "hidden=choice:16|64", "--hidden", "32"], vec!["--param hidden", "--hidden"]),
        (
            vec![
                "--param",
                "weight_decay=choice:0.0|0.5",
                "--optimizer",
                "adamw",
                "--hparams",
                r#"{"weight_decay": 0.1}"#,
            ],
            vec!["--param weight_decay", "--hparams", "`weight_decay`"],
        ),
        (vec!["--param", "lr=choice:0.001|0.01", "--hparams", r#"{"lr": 0.5}"#], vec!["--param lr", "--hparams"]),
    ] {
        let e = run_err(&[&base[..], &extra[..]].concat());
        for n in needles {
            assert!(e.contains(n) && e.contains("give one of them"), "{extra:?}: {e}");
        }
    }
}

/// `steps_to:ACC` is read from evaluations along each trial, not from its epochs' ends alone
/// (where every trial that reaches the target within the first epoch would tie at its length).
#[test]
fn steps_to_is_measured_within_the_epoch() {
    let dir = out("steps-to");
    let d = dir.to_str().unwrap();
    let a = ["sweep", "--model", "mlp", "--threads", "1", "--steps", "151", "--method", "grid"];
    let mut a: Vec<&str> = a.to_vec();
    a.extend(["--param", "lr=choice:0.0003|0.01", "--objective", "steps_to:80", "--out", d]);
    run_ok(&a);
    let t = trials(&dir);
    let steps: Vec<f64> = t.iter().map(|x| x["loss"].as_f64().unwrap()).collect();
    assert!(steps.iter().all(|s| *s > 0.0 && *s < 151.0), "{steps:?}");
    assert_ne!(steps[0], steps[1], "{steps:?}");
    // 49 evaluations inside each trial (at k/50 of its 151 steps), besides its end.
    let evals = std::fs::read_to_string(dir.join("trials/001/evals.jsonl")).unwrap();
    let at: Vec<u64> = evals
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(at.iter().filter(|&&s| s < 151).count(), 49, "{at:?}");
    // A target no trial reaches: the trials complete, and the sweep says none reached it.
    #[rustfmt::skip]
    let text = run_ok(&["sweep", "--model", "mlp", "--threads", "1", "--steps", "10", "--method", "grid", "--param",
        "lr=choice:0.0003|0.01", "--objective", "steps_to:99.9", "--out", d, "--force"]);
    assert!(text.contains("none reached its target") && !text.contains("no trial finished"), "{text}");
}
