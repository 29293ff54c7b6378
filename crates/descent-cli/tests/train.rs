//! `descent train` as a user runs it.

mod common;

use common::descent;

/// A fresh run folder under the temp dir.
/// A test's output folder as the `&str` the tests pass, removed when the test is done with it.
struct Out(common::Scratch);

impl std::ops::Deref for Out {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.arg()
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.arg())
    }
}

impl AsRef<std::path::Path> for Out {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Out {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

fn out(tag: &str) -> Out {
    Out(common::out(tag))
}

/// `descent ARGS`, which must succeed: its output.
fn run_ok_out(args: &[&str]) -> String {
    common::run_ok(args)
}

#[test]
fn linear_regression_prints_the_learned_slope() {
    let dir = out("slope");
    let out = descent()
        .args(["train", "--model", "linear", "--optimizer", "sgd", "--epochs", "3", "--threads", "1", "--out", &dir])
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
    let dir = out("mlp");
    let out = descent()
        .args(["train", "--model", "mlp", "--steps", "200", "--threads", "2", "--out", &dir])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let acc: f64 =
        text.lines().last().unwrap().trim_start_matches("test accuracy: ").trim_end_matches('%').parse().unwrap();
    assert!(acc > 85.0, "{text}");
}

#[test]
fn bad_flags_are_errors_that_list_the_valid_choices() {
    let dir = out("bad");
    for (args, needles) in [
        (vec!["train", "--model", "vgg"], vec!["vgg", "lenet", "mlp", "linear", "resnet", "plain"]),
        (vec!["train", "--model", "linear", "--optimizer", "adamz"], vec!["adamz", "torch.adam"]),
        (
            vec!["train", "--model", "linear", "--optimizer", "sgd", "--hparams", "{\"momentun\": 0.9}"],
            vec!["momentun", "momentum"],
        ),
        (vec!["train", "--init", "ones"], vec!["ones", "xavier_uniform"]),
        (vec!["train", "--hparams", "{momentum"], vec!["hparams", "JSON"]),
        (vec!["train", "--model", "mlp", "--data", "no/such/dir"], vec!["no/such/dir", "missing"]),
        // A batch whose activations cannot be held is refused before it is allocated.
        (
            vec!["train", "--model", "resnet", "--depth", "30", "--width", "4096"],
            vec!["--batch-size 128 --depth 30 --width 4096", "GB of memory available"],
        ),
        (vec!["train", "--model", "lenet", "--width", "100000"], vec!["--width 100000", "GB of memory available"]),
        (
            vec!["train", "--model", "mlp", "--hidden", "100000000"],
            vec!["--hidden 100000000", "GB of memory available"],
        ),
        // Shapes whose size is checked in closed form, before anything is built (a depth of a
        // billion blocks, a gpt of a billion layers).
        (
            vec!["train", "--model", "resnet", "--depth", "1000000002"],
            vec!["--depth 1000000002", "GB of memory available"],
        ),
        (
            vec!["train", "--model", "gpt", "--n-layer", "1000000000", "--steps", "1"],
            vec!["--n-layer 1000000000", "weights and gradients", "GB of memory available"],
        ),
        // A step larger than the training set, which the loader would cut without a word.
        (
            vec!["train", "--model", "mlp", "--batch-size", "100000"],
            vec!["--batch-size 100000", "at most the training set"],
        ),
        (
            vec!["train", "--model", "mlp", "--batch-size", "1000", "--accumulate", "100000"],
            vec!["--accumulate 100000", "at most the training set"],
        ),
        // A number that is not zero but would read as zero (below the smallest double), as a
        // flag's value and inside JSON.
        (vec!["train", "--model", "linear", "--lr", "1e-400"], vec!["`1e-400` in `--lr 1e-400`", "read as 0"]),
        (vec!["train", "--model", "linear", "--hparams", "{\"weight_decay\": 5e-999}"], vec!["5e-999", "read as 0"]),
        // A rate the schedule sets itself, as torch's cyclical schedules do: an explicit --lr would
        // be ignored.
        (
            vec![
                "train",
                "--model",
                "linear",
                "--lr",
                "0.05",
                "--schedule",
                "torch.OneCycleLR",
                "--schedule-args",
                "{\"max_lr\": 0.01, \"total_steps\": 100}",
            ],
            vec!["--lr 0.05", "sets the learning rate itself"],
        ),
        // Settings the run would not use or could not honour.
        (vec!["train", "--model", "lenet", "--dropout", "0.2"], vec!["--dropout", "no dropout"]),
        (vec!["train", "--model", "linear", "--clip-value", "1e-50"], vec!["--clip-value 1e-50", "normal f32"]),
        (vec!["train", "--model", "linear", "--steps", "18446744073709551615"], vec!["--steps", "2^63"]),
        (
            vec!["train", "--model", "linear", "--steps", "3", "--min-loss-change", "0.5"],
            vec!["--min-loss-change", "never"],
        ),
        (
            vec!["train", "--model", "lenet", "--steps", "3", "--ema", "0.9", "--average-buffers"],
            vec!["--average-buffers", "no buffers"],
        ),
        // A distillation's temperature whose square (the loss's scale) an f32 cannot hold, one at
        // which the divergence is below float64's resolution, and a distillation with accumulated
        // micro-batches: refused before the run's folder is made.
        (
            vec!["distill", "--teacher", "no/such/run", "--student", "mlp", "--temperature", "1e20"],
            vec!["--temperature 1e20", "between 1.1e-19 and 10000"],
        ),
        (
            vec!["distill", "--teacher", "no/such/run", "--student", "mlp", "--temperature", "1e5"],
            vec!["--temperature 100000", "float64"],
        ),
        (
            vec!["distill", "--teacher", "no/such/run", "--student", "mlp", "--accumulate", "2"],
            vec!["--accumulate 2", "one batch a step"],
        ),
        (
            vec!["distill", "--teacher", "no/such/run", "--student", "mlp", "--data-parallel", "2"],
            vec!["--data-parallel 2", "one process"],
        ),
    ] {
        let out = descent().args(&args).args(["--out", &dir]).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        for n in needles {
            assert!(err.contains(n), "{args:?}: {err}");
        }
        assert!(!std::path::Path::new(&dir).exists(), "{args:?} left a run folder behind");
    }
}

/// A run whose learning rate its optimizer's links set (optax.chain, links named as the README
/// names them) records and reports no rate of its own, so its config.toml replays it step for step; values a
/// config file gives are checked as flags are (an interval, a number that would read as 0).
#[test]
fn a_runs_config_toml_replays_it_and_config_values_are_checked() {
    let (a, b) = (out("chain-a"), out("chain-b"));
    let links = r#"{"links": [["optax.scale_by_adam", {}], ["scale", {"step_size": -0.01}]]}"#;
    let text = run_ok_out(&[
        "train",
        "--model",
        "linear",
        "--steps",
        "5",
        "--optimizer",
        "optax.chain",
        "--hparams",
        links,
        "--out",
        &a,
    ]);
    assert!(text.contains("learning rate in its --hparams"), "{text}");
    // No rate to report: the epoch line says none rather than "lr NaN".
    assert!(text.contains("epoch 1:") && !text.contains("lr "), "{text}");
    run_ok_out(&["train", "--config", &format!("{a}/config.toml"), "--out", &b]);
    let steps = |d: &str| std::fs::read_to_string(format!("{d}/steps.csv")).unwrap();
    assert_eq!(steps(&a), steps(&b));
    let dir = out("config-checks");
    std::fs::create_dir_all(&dir).unwrap();
    for (body, needle) in [
        (
            "model = \"linear\"\nschedule = \"torch.StepLR\"\nschedule_interval = \"daily\"\n",
            "--schedule-interval daily",
        ),
        ("model = \"linear\"\nlr = 1e-400\n", "`1e-400` at line 2"),
    ] {
        let f = format!("{dir}/c.toml");
        std::fs::write(&f, body).unwrap();
        let o = descent().args(["train", "--config", &f, "--out", &format!("{dir}/run")]).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(needle), "{body}: {e}");
    }
    // A larger --steps alone cannot continue a run its epochs ended: refused, not a silent no-op.
    let one = out("one-epoch");
    run_ok_out(&["train", "--model", "linear", "--epochs", "1", "--out", &one]);
    let o = descent().args(["train", "--resume", &one, "--steps", "1000"]).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("--steps 1000") && e.contains("--epochs"), "{e}");
    // On resume, a flag repeating the default the config left unset is no contradiction, and an
    // f32 setting is shown in its own digits (not the f64 it was widened to).
    let m = out("resume-defaults");
    run_ok_out(&["train", "--model", "mlp", "--steps", "3", "--threads", "1", "--out", &m]);
    run_ok_out(&["train", "--resume", &m, "--steps", "6", "--hidden", "128"]);
    let o = descent().args(["train", "--resume", &m, "--steps", "9", "--dropout", "0.3"]).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("--dropout 0.3 contradicts") && e.contains("(dropout = 0.2)"), "{e}");
    // Patience 0 stops at the first epoch without improvement (Keras's meaning), not after the first.
    let p = out("patience-0");
    run_ok_out(&["train", "--model", "linear", "--epochs", "3", "--patience", "0", "--out", &p]);
    let epochs = std::fs::read_to_string(format!("{p}/metrics.jsonl")).unwrap().lines().count();
    assert!(epochs > 1, "{epochs} epoch(s)");
}

/// A last step that makes the weights non-finite (the loss is finite until the step after) ends
/// the run with an error naming the weight, instead of a checkpoint every other command refuses.
#[test]
fn a_last_step_that_diverges_is_an_error() {
    let dir = out("diverged-last-step");
    let args = ["train", "--model", "linear", "--optimizer", "sgd", "--lr", "1e300", "--steps", "1", "--out", &dir];
    let o = descent().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("after step 1") && err.contains("diverged") && err.contains("weight `"), "{err}");
    assert!(!std::path::Path::new(&dir).join("checkpoint.safetensors").exists());
}

/// Benchmark counts that cannot be honoured are refused: a warm-up and timed batches whose total
/// does not fit a counter (it wrapped to no timed batch and a NaN rate), and a thread count past
/// what `train` accepts (it spent a minute spawning threads, then failed or overflowed a stack).
#[test]
fn bench_counts_and_threads_are_bounded() {
    for (args, needles) in [
        (
            vec!["bench", "train", "--model", "mlp", "--batches", "1", "--warmup", "18446744073709551615"],
            vec!["--warmup 18446744073709551615", "--batches 1"],
        ),
        (vec!["bench", "step", "--params", "1000", "--threads", "100000"], vec!["--threads 100000", "1024"]),
    ] {
        let out = descent().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.lines().count() <= 2, "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: {err}");
        }
    }
}

#[test]
fn run_folder_metrics_and_exact_resume() {
    let dir = common::out("run");
    let run = |args: &[&str]| {
        let o = descent().args(args).output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr))
    };
    let (a, b) = (dir.join("a"), dir.join("b"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let (ok, text) = run(&["train", "--model", "linear", "--epochs", "4", "--out", a]);
    assert!(ok, "{text}");
    let (ok, text) = run(&["train", "--model", "linear", "--epochs", "2", "--out", b]);
    assert!(ok, "{text}");
    // The folder exists: refused without --force, continued with --resume.
    let (ok, text) = run(&["train", "--model", "linear", "--epochs", "2", "--out", b]);
    assert!(!ok && text.contains("--force") && text.contains("--resume"), "{text}");
    let (ok, text) = run(&["train", "--resume", b, "--epochs", "4"]);
    assert!(ok && text.contains("resuming"), "{text}");
    let last = |t: &str| t.lines().last().unwrap().to_string();
    let read = |d: &str, f: &str| std::fs::read_to_string(std::path::Path::new(d).join(f)).unwrap();
    // Same weights, same metrics (timings aside) as the uninterrupted run.
    let (_, ta) = run(&["train", "--model", "linear", "--epochs", "4", "--out", a, "--force"]);
    assert_eq!(last(&ta), last(&text));
    let losses = |d: &str| {
        read(d, "metrics.csv").lines().map(|l| l.split(',').take(4).collect::<Vec<_>>().join(",")).collect::<Vec<_>>()
    };
    assert_eq!(losses(a), losses(b));
    assert_eq!(read(b, "metrics.jsonl").lines().count(), 4);
    // Every CSV row has as many fields as the header.
    let csv = read(b, "metrics.csv");
    let widths: Vec<usize> = csv.lines().map(|l| l.split(',').count()).collect();
    assert!(widths.iter().all(|&w| w == widths[0]), "{csv}");
    assert!(read(b, "config.json").contains("\"model\": \"linear\""));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_toml_config_under_command_line_flags() {
    let scratch = out("toml");
    let dir = std::path::PathBuf::from(&*scratch);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        "model = \"linear\"\noptimizer = \"sgd\"\nlr = 0.1\nepochs = 2\nhparams = { momentum = 0.5 }\n",
    )
    .unwrap();
    let run = |extra: &[&str], out: &str| {
        let o =
            descent().args(["train", "--config", cfg.to_str().unwrap(), "--out", out]).args(extra).output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr))
    };
    let a = dir.join("a").to_string_lossy().to_string();
    let (ok, text) = run(&[], &a);
    assert!(ok && text.lines().filter(|l| l.starts_with("epoch ")).count() == 2, "{text}");
    // The run folder's config.toml runs as is and gives the same numbers.
    let b = dir.join("b").to_string_lossy().to_string();
    let o = descent().args(["train", "--config", &format!("{a}/config.toml"), "--out", &b]).output().unwrap();
    let tb = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(text.lines().last(), tb.lines().last(), "{tb}");
    // A flag on the command line wins over the file.
    let c = dir.join("c").to_string_lossy().to_string();
    let (ok, text) = run(&["--epochs", "3"], &c);
    assert!(ok && text.lines().filter(|l| l.starts_with("epoch ")).count() == 3, "{text}");
    // --hparams merges into the file's table key by key, and its rate wins over the file's lr.
    let h = dir.join("h").to_string_lossy().to_string();
    let (ok, text) = run(&["--hparams", r#"{"lr": 0.01, "dampening": 0.1}"#], &h);
    assert!(ok && text.contains("(lr 0.01, schedule constant)"), "{text}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("h").join("config.json")).unwrap()).unwrap();
    assert_eq!(config["hparams"], serde_json::json!({"momentum": 0.5, "dampening": 0.1}), "{config}");
    assert_eq!(config["lr"], 0.01);
    // Unknown keys are named.
    std::fs::write(&cfg, "model = \"linear\"\nlrr = 0.1\n").unwrap();
    let (ok, text) = run(&[], &dir.join("d").to_string_lossy());
    assert!(!ok && text.contains("unknown setting `lrr`") && text.contains("lr"), "{text}");
    // A flag that is false by default is a setting of the file too: `shard_optimizer` is read
    // (and refused on one process, as on the command line), not an unknown key.
    std::fs::write(&cfg, "model = \"linear\"\nshard_optimizer = true\n").unwrap();
    let (ok, text) = run(&[], &dir.join("e").to_string_lossy());
    assert!(!ok && text.contains("--shard-optimizer") && text.contains("one process"), "{text}");
    // So are `precision` and `augment`, left out of config.json when not given.
    std::fs::write(&cfg, "model = \"linear\"\nprecision = \"f32\"\n").unwrap();
    let (ok, text) = run(&[], &dir.join("f").to_string_lossy());
    assert!(ok, "{text}");
    std::fs::write(&cfg, "model = \"lenet\"\nsteps = 2\naugment = \"translate=1,rotate=0\"\n").unwrap();
    let (ok, text) = run(&[], &dir.join("g").to_string_lossy());
    assert!(ok, "{text}");
    let config = std::fs::read_to_string(dir.join("g").join("config.json")).unwrap();
    assert!(config.contains("translate=1,rotate=0"), "{config}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--accumulate 4 --batch-size 32` trains as `--batch-size 128`: the same step losses to float
/// rounding, and the same number of steps; --help says --batch-size is then the micro-batch.
#[test]
fn accumulated_micro_batches_train_as_one_larger_batch() {
    let (a, b) = (out("acc-128"), out("acc-4x32"));
    let base = ["train", "--model", "mlp", "--dropout", "0", "--steps", "20", "--threads", "2"];
    let text = common::run_ok(&[&base[..], &["--batch-size", "128", "--out", &a]].concat());
    assert!(!text.contains("accumulating"), "{text}");
    let text = common::run_ok(&[&base[..], &["--batch-size", "32", "--accumulate", "4", "--out", &b]].concat());
    assert!(text.contains("accumulating 4 micro-batches of 32 per step: 128 samples per step"), "{text}");
    let losses = |d: &str| -> Vec<f64> {
        common::csv_rows(&std::path::Path::new(d).join("steps.csv")).iter().map(|r| r[2].parse().unwrap()).collect()
    };
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 20);
    let worst = la.iter().zip(&lb).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    println!("batch 128 against 4 × 32: step losses differ by {worst:.2e} at most over 20 steps");
    assert!(worst < 1e-5, "{la:?} vs {lb:?}");
    assert!(std::fs::read_to_string(std::path::Path::new(&b).join("config.json"))
        .unwrap()
        .contains("\"accumulate\": 4"));
    let help = common::run_ok(&["train", "--help"]);
    assert!(help.contains("--accumulate <K>") && help.contains("micro-batch"), "{help}");
    let e = common::run_err(&["train", "--model", "mlp", "--accumulate", "0"]);
    assert!(e.contains("--accumulate 0"), "{e}");
    let e = common::run_err(&["train", "--model", "mlp", "--optimizer", "lbfgs", "--accumulate", "2"]);
    assert!(e.contains("--accumulate"), "{e}");
    for d in [a, b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// pytorch_optimizer's AdaMuon needs `use_muon` in every parameter group: given for all the
/// parameters in --hparams and per --group, it trains (Muon on the weight matrices, AdamW on the
/// rest); without it the error says where to give it.
#[test]
fn adamuon_takes_use_muon_per_group() {
    let dir = out("adamuon");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            "mlp",
            "--steps",
            "30",
            "--threads",
            "1",
            "--optimizer",
            "po.adamuon",
            "--out",
            &dir,
        ];
        args.extend_from_slice(extra);
        args.push("--force");
        let o = descent().args(&args).output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr))
    };
    let (ok, text) = run(&["--hparams", r#"{"use_muon": false}"#, "--group", r#"weight={"use_muon": true}"#]);
    assert!(ok, "{text}");
    let acc: f64 =
        text.lines().last().unwrap().trim_start_matches("test accuracy: ").trim_end_matches('%').parse().unwrap();
    assert!(acc > 20.0, "{text}");
    let (ok, text) = run(&[]);
    assert!(!ok && text.trim().lines().count() == 1 && text.contains("`use_muon`"), "{text}");
}

/// Early stopping restores its best epoch, and the run folder holds what it restored: `evaluate`
/// scores the best epoch's weights (as `train` said), the checkpoint says that epoch, a resume is
/// refused, and `compare` reports the best epoch's row.
#[test]
fn early_stopping_leaves_its_best_epoch_in_the_folder() {
    // A learning rate this large makes the test loss rise in epoch 2.
    let flags = ["--model", "mlp", "--batch-size", "2048", "--threads", "1", "--epochs", "8", "--patience", "1"];
    let d = out("early-stop-best");
    let said = run_ok_out(
        &[&["train"][..], &flags, &["--optimizer", "sgd", "--lr", "2.0", "--ema", "0.9", "--out", &d]].concat(),
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(format!("{d}/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(said.contains("restored epoch 1") && rows.len() == 2, "{said}");
    let best = format!("test accuracy: {:.2}%", 100.0 * rows[0]["test_accuracy"].as_f64().unwrap());
    let last = format!("test accuracy: {:.2}%", 100.0 * rows[1]["test_accuracy"].as_f64().unwrap());
    assert_ne!(best, last);
    assert!(said.contains(&best), "{said}");
    let scored = run_ok_out(&["evaluate", &d, "--threads", "1"]);
    assert!(scored.contains(&best) && scored.contains("epoch 1"), "{scored}");
    // The average of the last epoch is no average of the weights kept: said, not used.
    let o = descent().args(["evaluate", &d, "--weights", "ema"]).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("early stopping") && e.contains("not kept"), "{e}");
    let again = run_ok_out(&["train", "--resume", &d]);
    assert!(again.contains("nothing to do") && again.contains("early stopping"), "{again}");

    let c = out("early-stop-compare");
    let table = run_ok_out(&[&["compare"][..], &flags, &["--run", "sgd:lr=2.0", "--out", &c]].concat());
    let best_pct = best.trim_start_matches("test accuracy: ");
    assert!(table.contains(best_pct) && table.contains("early stopping: epoch 1 restored"), "{table}");
}

/// A value the --config file gave that a check refuses is named as the file's (the checks name
/// the flag); an MNIST folder with both the compressed and the plain file of a set is refused.
#[test]
fn config_errors_name_the_file_and_an_ambiguous_mnist_folder_is_refused() {
    let dir = out("config-blame");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = format!("{dir}/c.toml");
    std::fs::write(&cfg, "model = \"linear\"\nthreads = 0\nsteps = 2\n").unwrap();
    let e = common::run_err(&["train", "--config", &cfg, "--out", &format!("{dir}/run")]);
    assert!(e.contains("c.toml: `threads` = 0"), "{e}");
    let e = common::run_err(&["train", "--config", &cfg, "--threads", "0", "--out", &format!("{dir}/run")]);
    assert!(e.starts_with("error: --threads 0"), "{e}");
    let mnist = format!("{dir}/mnist");
    std::fs::create_dir_all(&mnist).unwrap();
    for f in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    {
        let from = format!("{}/../../data/mnist/{f}.gz", env!("CARGO_MANIFEST_DIR"));
        std::fs::copy(from, format!("{mnist}/{f}.gz")).unwrap();
    }
    std::fs::write(format!("{mnist}/train-labels-idx1-ubyte"), [0u8; 8]).unwrap();
    let e =
        common::run_err(&["train", "--model", "mlp", "--steps", "1", "--data", &mnist, "--out", &format!("{dir}/m")]);
    assert!(e.contains("train-labels-idx1-ubyte") && e.contains("both there"), "{e}");
}

/// The stopping rules judge whole epochs, and what they compare with survives a resume: a run
/// cut by --steps (inside an epoch, or at an epoch's end) and resumed stops where the run never
/// cut stops, with the same steps.
#[test]
fn stopping_rules_stop_a_resumed_run_where_the_whole_run_stops() {
    let base = ["train", "--model", "mlp", "--batch-size", "2048", "--threads", "1", "--epochs", "4"];
    for (rule, cut) in [(["--target-accuracy", "10"], "10"), (["--min-loss-change", "100"], "45")] {
        let (whole, part) = (out("rule-whole"), out("rule-part"));
        let said = run_ok_out(&[&base[..], &rule, &["--out", &whole]].concat());
        run_ok_out(&[&base[..], &rule, &["--steps", cut, "--out", &part]].concat());
        let again = run_ok_out(&["train", "--resume", &part, "--steps", "200"]);
        let last = |s: &str| {
            s.lines().find(|l| l.starts_with("target accuracy") || l.starts_with("converged")).map(str::to_string)
        };
        assert!(last(&said).is_some() && last(&said) == last(&again), "{rule:?}: {said}\n---\n{again}");
        let steps = |d: &str| std::fs::read_to_string(format!("{d}/steps.csv")).unwrap();
        assert_eq!(steps(&whole), steps(&part), "{rule:?}: steps.csv differs");
    }
}

/// A one-step MLP run at a rate that makes its evaluation diverge (its test loss NaN).
fn diverged_run(tag: &str) -> Out {
    let d = out(tag);
    run_ok_out(&[
        "train",
        "--model",
        "mlp",
        "--optimizer",
        "sgd",
        "--lr",
        "1e30",
        "--steps",
        "1",
        "--threads",
        "1",
        "--out",
        &d,
    ]);
    d
}

/// What JSON numbers cannot hold is written as descent writes it everywhere ("NaN", "inf"), not
/// as `null`, and read back by `plot`.
#[test]
fn a_diverged_evaluation_is_written_as_the_string_nan() {
    let d = diverged_run("nan-metrics");
    let row: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(format!("{d}/metrics.jsonl")).unwrap().lines().next().unwrap())
            .unwrap();
    assert_eq!(row["test_loss"], "NaN", "{row}");
    let pics = out("nan-metrics-plot");
    run_ok_out(&["plot", &d, "--out", &pics]);
}

/// A resume keeps the row of the epoch a step limit cut until it writes that epoch's row in its
/// place: a resumed run that fails first loses no row.
#[test]
fn a_failed_resume_loses_no_metrics_row() {
    let d = diverged_run("failed-resume");
    let rows = || std::fs::read_to_string(format!("{d}/metrics.jsonl")).unwrap().lines().count();
    assert_eq!(rows(), 1);
    common::run_err(&["train", "--resume", &d, "--steps", "2"]);
    assert_eq!(rows(), 1, "the checkpoint's row went with the failed resume");
    let csv = std::fs::read_to_string(format!("{d}/metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
}

/// A resume takes a setting given as the run's own: its optimizer by another name, SWA's
/// annealing at the defaults the run used; another value is refused.
#[test]
fn a_resume_takes_the_run_s_own_settings_by_other_names() {
    let d = out("resume-same");
    let run = ["train", "--model", "mlp", "--batch-size", "2048", "--epochs", "3", "--threads", "1"];
    run_ok_out(
        &[&run[..], &["--steps", "45", "--optimizer", "adam", "--swa-start", "1", "--swa-lr", "0.01", "--out", &d]]
            .concat(),
    );
    let again = ["--optimizer", "torch.adam", "--swa-anneal", "cos", "--swa-anneal-epochs", "10"];
    run_ok_out(&[&["train", "--resume", &d, "--steps", "50"][..], &again].concat());
    let e = common::run_err(&["train", "--resume", &d, "--steps", "60", "--swa-anneal", "linear"]);
    assert!(e.contains("--swa-anneal"), "{e}");
}

/// A run whose optimizer evaluates other weights than those it steps (schedule-free's average
/// `x`, optax Lookahead's slow weights) is scored by `descent evaluate` at those, the figures of
/// its own last evaluation; early stopping restores the weights its best epoch evaluated.
#[test]
fn evaluate_scores_the_weights_the_run_evaluated() {
    let rows = |d: &Out| -> Vec<serde_json::Value> {
        std::fs::read_to_string(format!("{d}/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let figures = |row: &serde_json::Value| {
        (
            format!("test loss: {:.5}", row["test_loss"].as_f64().unwrap()),
            format!("test accuracy: {:.2}%", 100.0 * row["test_accuracy"].as_f64().unwrap()),
        )
    };
    let lookahead =
        r#"{"fast_optimizer": ["adam", {"learning_rate": 0.001}], "sync_period": 7, "slow_step_size": 0.5}"#;
    let base = ["train", "--model", "mlp", "--hidden", "16", "--threads", "1"];
    for (tag, opt) in [
        ("eval-sf", &["--optimizer", "optax.contrib.schedule_free_adamw", "--lr", "3e-3"][..]),
        ("eval-sf-radam", &["--optimizer", "po.schedulefreeradam"][..]),
        ("eval-lookahead", &["--optimizer", "optax.lookahead", "--hparams", lookahead][..]),
    ] {
        let d = out(tag);
        run_ok_out(&[&base[..], opt, &["--steps", "60", "--out", &d]].concat());
        let (loss, acc) = figures(rows(&d).last().unwrap());
        let scored = run_ok_out(&["evaluate", &d, "--threads", "1"]);
        assert!(scored.contains(&loss) && scored.contains(&acc), "{tag}: the run's {loss}, {acc}; evaluate: {scored}");
    }
    // Every later epoch is no improvement by 10: epoch 1 is restored, as it evaluated.
    let d = out("eval-sf-early");
    let flags = ["--batch-size", "2048", "--epochs", "3", "--patience", "1", "--min-delta", "10"];
    let said = run_ok_out(
        &[&base[..], &flags, &["--optimizer", "optax.contrib.schedule_free_adamw", "--lr", "3e-3", "--out", &d]]
            .concat(),
    );
    assert!(said.contains("restored epoch 1"), "{said}");
    let (loss, acc) = figures(&rows(&d)[0]);
    let scored = run_ok_out(&["evaluate", &d, "--threads", "1"]);
    assert!(scored.contains(&loss) && scored.contains(&acc), "epoch 1's {loss}, {acc}; evaluate: {scored}");
}

/// Whether an optimizer takes a rate of its own is asked with its per-parameter lists fitting:
/// a chain with a masked link trains on its links' rates and refuses `--lr`; SWA, which anneals
/// the run's own rate, is refused for it; pruning is refused with an optimizer whose evaluated
/// weights the masks would not reach. Each before any folder is made.
#[test]
fn compositions_with_per_parameter_lists_and_what_they_cannot_do() {
    let chain = r#"{"links": [["optax.scale_by_adam", {}], ["optax.add_decayed_weights", {"weight_decay": 1e-4, "mask": [true, false, true, false]}], ["optax.scale_by_learning_rate", {"learning_rate": 0.01}]]}"#;
    let d = out("masked-chain");
    let base = ["train", "--model", "mlp", "--optimizer", "optax.chain", "--hparams", chain, "--threads", "1"];
    let said = run_ok_out(&[&base[..], &["--steps", "3", "--out", &d]].concat());
    assert!(said.contains("test accuracy"), "{said}");
    let e = out("masked-chain-refused");
    for (extra, needles) in [
        (&["--steps", "3", "--lr", "0.5"][..], &["--lr 0.5", "no learning rate of its own"][..]),
        (
            &["--epochs", "2", "--steps", "1900", "--swa-start", "1", "--swa-lr", "0.005"][..],
            &["SWA", "none of its own"][..],
        ),
    ] {
        common::one_line_error(&[&base[..], extra, &["--out", &e]].concat(), needles);
        assert!(!std::path::Path::new(&*e).exists(), "{extra:?}: a refused run left its folder");
    }
    let sf = ["train", "--model", "mlp", "--optimizer", "schedule_free_adamw", "--steps", "30", "--threads", "1"];
    common::one_line_error(
        &[&sf[..], &["--prune-to", "0.5", "--prune-end", "20", "--prune-frequency", "10", "--out", &e]].concat(),
        &["pruning", "schedule_free_adamw", "evaluates others"],
    );
    assert!(!std::path::Path::new(&*e).exists());
}
