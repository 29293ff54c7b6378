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

/// The roofline models the optimizer's state buffers per parameter, however many tensors share a
/// size: with one parameter per tensor every buffer has the first tensor's length, and counting
/// those made the roofline's buffers grow with the square of the tensors (32 GB at 1000).
#[test]
fn bench_step_counts_state_buffers_per_parameter() {
    let text = run_ok(&["bench", "step", "--optimizer", "adam", "--params", "300", "--tensors", "300", "--steps", "2"]);
    let r: serde_json::Value = serde_json::from_str(text.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(r["state_buffers"], 2, "{r}");
    assert_eq!(r["tensors"], 300, "{r}");
}

#[test]
fn bench_step_refuses_bad_settings() {
    let e = run_err(&["bench", "step", "--optimizer", "adamw", "--params", "0"]);
    assert!(e.contains("--params"), "{e}");
    let e = run_err(&["bench", "step", "--optimizer", "adamw", "--params", "10", "--tensors", "11"]);
    assert!(e.contains("--tensors"), "{e}");
    let e = run_err(&["bench", "step", "--optimizer", "nosuch", "--params", "100"]);
    assert!(e.contains("nosuch"), "{e}");
    // Arguments that are not a JSON object: an error naming the flag, not a panic.
    let e = run_err(&["bench", "step", "--optimizer", "adamw", "--params", "100", "--hparams", "[1]"]);
    assert!(e.contains("--hparams") && !e.contains("panicked"), "{e}");
    // Arguments for "every optimizer" would be ignored by the table's own; and the baseline named
    // on a model takes the arguments given (here an unknown one, refused).
    let e = run_err(&["bench", "step", "--optimizer", "all", "--params", "100", "--hparams", r#"{"eps": 1}"#]);
    assert!(e.contains("--hparams with --optimizer all"), "{e}");
    let e = run_err(&["bench", "step", "--model", "mlp", "--optimizer", "torch.adamw", "--hparams", r#"{"bogus": 1}"#]);
    assert!(e.contains("bogus"), "{e}");
    // `all` beside names would time the default list and drop the names: refused.
    for list in ["all,torch.adam", "torch.adam,all"] {
        let e = run_err(&["bench", "step", "--model", "mlp", "--optimizer", list, "--steps", "1"]);
        assert!(e.contains(&format!("--optimizer {list}")) && e.contains("give it alone"), "{e}");
    }
    // More parameters than memory holds: refused up front, not an allocation abort.
    let e = run_err(&["bench", "step", "--optimizer", "adam", "--params", "18446744073709551615"]);
    assert!(e.contains("--params") && !e.contains("panicked"), "{e}");
    let e = run_err(&["bench", "step", "--model", "mlp", "--optimizer", "adam,adam"]);
    assert!(e.contains("adam named twice"), "{e}");
    let e = run_err(&["bench", "step", "--model", "mlp", "--optimizer", "sgd,,adam"]);
    assert!(e.contains("an empty name"), "{e}");
    // One optimizer's arguments are not handed to every optimizer of a list.
    let e = run_err(&["bench", "step", "--model", "mlp", "--optimizer", "sgd,adam", "--hparams", r#"{"lr": 0.5}"#]);
    assert!(e.contains("--hparams") && e.contains("single optimizer"), "{e}");
}

/// `descent bench train`: what it cannot honour is refused in one line, before any timing: a
/// batch larger than the training set, `--rounds` with one precision, a precision named twice.
#[test]
fn bench_train_refuses_what_it_cannot_honour() {
    let train = |extra: &[&'static str]| -> Vec<&'static str> {
        [&["bench", "train", "--model", "mlp", "--batches", "1", "--warmup", "0"][..], extra].concat()
    };
    common::one_line_error(&train(&["--batch-size", "10000000"]), &["--batch-size 10000000", "60000 training samples"]);
    common::one_line_error(&train(&["--rounds", "5"]), &["--rounds 5", "one precision"]);
    common::one_line_error(&train(&["--precision", "f32,f32"]), &["--precision f32,f32", "f32 named twice"]);
}

/// `descent bench step --model`: a row and a JSON line per optimizer on the model's own tensors,
/// with its ratio to AdamW and its state memory; an unknown model and flat-buffer flags refused.
#[test]
fn bench_step_on_a_models_parameters_reports_each_optimizer_against_adamw() {
    let text = run_ok(&[
        "bench",
        "step",
        "--model",
        "lenet",
        "--optimizer",
        "torch.adamw,optax.contrib.muon",
        "--steps",
        "2",
        "--threads",
        "1",
    ]);
    assert!(text.contains("x AdamW") && text.contains("state MB"), "{text}");
    let lines: Vec<serde_json::Value> =
        text.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["optimizer"], "torch.adamw");
    assert_eq!(lines[1]["optimizer"], "optax.contrib.muon");
    let params = lines[0]["params"].as_u64().unwrap();
    assert_eq!(params, 44_426, "LeNet-5's parameters");
    for r in &lines {
        assert_eq!(r["model"], "lenet");
        assert_eq!(r["tensors"], 10, "{r}");
        for key in ["ms_per_step", "adamw_ms_per_step", "ratio_to_adamw"] {
            let x = r[key].as_f64().unwrap_or(-1.0);
            assert!(x.is_finite() && x > 0.0, "{key} = {x}");
        }
    }
    // AdamW keeps two moments per parameter; Muon one on the matrices, two elsewhere.
    assert_eq!(lines[0]["state_bytes"].as_u64().unwrap(), 8 * params);
    let muon = lines[1]["state_bytes"].as_u64().unwrap();
    assert!(muon >= 4 * params && muon < 8 * params, "{muon}");
    assert!(text.lines().any(|l| l.starts_with("optax.contrib.muon: ")), "the frequency note: {text}");

    let e = run_err(&["bench", "step", "--model", "resnet9000"]);
    assert!(e.contains("--model resnet9000") && e.contains("gpt, lenet, mlp"), "{e}");
    let e = run_err(&["bench", "step", "--model", "mlp", "--params", "1000"]);
    assert!(e.contains("--params"), "{e}");
    let e = run_err(&["bench", "step", "--model", "mlp", "--optimizer", "torch.adamw,nosuch"]);
    assert!(e.contains("nosuch"), "{e}");
}

/// `descent bench optimizers` on a few MLP steps: each optimizer's grid of rates on the first
/// seed, its best rate on the other seeds, a table row per optimizer; killed after some runs (the
/// last line of runs.jsonl cut), `--resume` reruns only what is missing and reports the same table.
#[test]
fn bench_optimizers_searches_each_rate_then_seeds_the_best_and_resumes() {
    let out = common::out("bench-opt");
    let o = out.to_str().unwrap();
    let args = [
        "bench",
        "optimizers",
        "--model",
        "mlp",
        "--steps",
        "6",
        "--threads",
        "1",
        "--grid-points",
        "2",
        "--seeds",
        "2",
        "--target",
        "20",
        "--run",
        "adamw:label=adamw",
        "--run",
        "sgd:lr=0.05,momentum=0.9,label=sgd_m",
        "--out",
        o,
    ];
    let text = run_ok(&args);
    let runs = std::fs::read_to_string(out.join("runs.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = runs.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.len(), 2 * (2 + 1), "{runs}");
    let search: Vec<f64> = recs
        .iter()
        .filter(|r| r["label"] == "sgd_m" && r["phase"] == "search")
        .map(|r| r["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(search.len(), 2);
    // Half a decade apart around the given centre 0.05.
    assert!(
        (search[0] * search[1] - 0.05f64 * 0.05).abs() < 1e-12 && (search[1] / search[0] - 10f64.sqrt()).abs() < 1e-9
    );
    // The seeded run uses the search's best rate.
    let best = recs
        .iter()
        .filter(|r| r["label"] == "sgd_m" && r["phase"] == "search")
        .max_by(|a, b| a["final_accuracy"].as_f64().unwrap().total_cmp(&b["final_accuracy"].as_f64().unwrap()))
        .unwrap()["lr"]
        .clone();
    let seeded: Vec<&serde_json::Value> =
        recs.iter().filter(|r| r["label"] == "sgd_m" && r["phase"] == "seed").collect();
    assert_eq!(seeded.len(), 1);
    assert_eq!(seeded[0]["lr"], best);
    assert_eq!(seeded[0]["seed"], 1);
    for r in &recs {
        assert_eq!(r["status"], "complete", "{r}");
        assert_eq!(r["steps"], 6, "{r}");
        assert!(r["state_bytes"].as_u64().unwrap() > 0 || r["label"] == "sgd_m");
    }
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(table.contains("| adamw |") && table.contains("| sgd_m |"), "{table}");
    assert!(text.contains("table, charts and report.html"), "{text}");
    for f in ["table.csv", "report.html", "curves.svg", "lr_search.svg", "bench.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }

    // Killed during the last run: its line half written.
    let lines: Vec<&str> = runs.lines().collect();
    let cut = format!("{}\n{}", lines[..4].join("\n"), &lines[4][..lines[4].len() / 2]);
    std::fs::write(out.join("runs.jsonl"), cut).unwrap();
    let text = run_ok(&["bench", "optimizers", "--resume", o, "--threads", "1"]);
    assert!(text.contains("(4 done before)"), "{text}");
    let again = std::fs::read_to_string(out.join("runs.jsonl")).unwrap();
    assert_eq!(again.lines().count(), 6, "{again}");
    assert_eq!(std::fs::read_to_string(out.join("table.md")).unwrap().lines().count(), table.lines().count());
    // A bench.json edited after runs were made, or a run's line given twice: refused on resume,
    // not averaged into the table.
    let json = std::fs::read_to_string(out.join("bench.json")).unwrap();
    std::fs::write(out.join("bench.json"), json.replace("\"validation\": 5000", "\"validation\": 100")).unwrap();
    let e = run_err(&["bench", "optimizers", "--resume", o, "--threads", "1"]);
    assert!(e.contains("other settings"), "{e}");
    std::fs::write(out.join("bench.json"), &json).unwrap();
    let first = again.lines().next().unwrap().to_string();
    std::fs::write(out.join("runs.jsonl"), format!("{again}{first}\n")).unwrap();
    let e = run_err(&["bench", "optimizers", "--resume", o, "--threads", "1"]);
    assert!(e.contains("there twice"), "{e}");
    // A damaged line before the last, or an accuracy that is no percentage: refused with the
    // line, the runs before and after it kept (not rerun, not ranked).
    let mut lines: Vec<String> = again.lines().map(String::from).collect();
    let good = lines[2].clone();
    lines[2] = "{garbage".into();
    std::fs::write(out.join("runs.jsonl"), lines.join("\n") + "\n").unwrap();
    let e = run_err(&["bench", "optimizers", "--resume", o, "--threads", "1"]);
    assert!(e.contains("runs.jsonl: line 3"), "{e}");
    assert_eq!(std::fs::read_to_string(out.join("runs.jsonl")).unwrap().lines().count(), 6);
    let v: serde_json::Value = serde_json::from_str(&good).unwrap();
    let acc = v["final_accuracy"].as_f64().unwrap();
    lines[2] = good.replace(&format!("\"final_accuracy\":{acc}"), "\"final_accuracy\":250.0");
    assert_ne!(lines[2], good);
    std::fs::write(out.join("runs.jsonl"), lines.join("\n") + "\n").unwrap();
    let e = run_err(&["bench", "optimizers", "--resume", o, "--threads", "1"]);
    assert!(e.contains("line 3") && e.contains("final_accuracy 250"), "{e}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bench_optimizers_refuses_what_it_cannot_honour() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["--model", "linear"], &["--model linear", "mlp, lenet"]),
        (&["--model", "mlp", "--optimizer", "adamw"], &["--optimizer"]),
        (&["--model", "mlp", "--lr", "0.1"], &["--lr"]),
        (&["--model", "mlp", "--run", "adamw", "--run", "adamw"], &["given twice"]),
        (&["--model", "mlp", "--run", "nosuch"], &["nosuch"]),
        (&["--model", "mlp", "--run", "adamw:lr=-1"], &["lr must be a positive number"]),
        (&["--model", "mlp", "--run", "adamw:seed=3"], &["`seed`"]),
        (&["--model", "mlp", "--grid-points", "0"], &["--grid-points"]),
    ];
    for (flags, expected) in cases {
        let args: Vec<&str> = ["bench", "optimizers"].iter().chain(flags.iter()).copied().collect();
        let e = run_err(&args);
        for x in *expected {
            assert!(e.contains(x), "{flags:?}: {e}");
        }
        assert!(e.trim().lines().count() <= 2, "{flags:?}: one or two lines: {e}");
    }
    // Settings that must fall within each run's steps are checked before the folder is made.
    let dir = common::out("bench-optimizers-length");
    let d = dir.to_str().unwrap();
    let short =
        ["bench", "optimizers", "--model", "mlp", "--hidden", "8", "--run", "adam", "--steps", "20", "--out", d];
    for (extra, expected) in [
        (&["--prune-to", "0.5", "--prune-start", "50"][..], "--prune-start 50"),
        (&["--prune-to", "0.5", "--prune-end", "100"][..], "--prune-end 100"),
        (&["--swa-start", "1", "--swa-lr", "1e-3"][..], "--swa-start 1"),
    ] {
        let e = run_err(&[&short[..], extra].concat());
        assert!(e.contains(expected) && e.contains("--run `adam`"), "{extra:?}: {e}");
        assert!(!dir.exists(), "{extra:?}: a refused benchmark left its folder");
    }
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

/// The pairs after `--optimizer all`'s table are measured apart from it, as their heading says,
/// and each ratio is the quotient of the two figures its line prints.
#[test]
fn bench_step_pairs_print_the_figures_of_their_ratio() {
    let text = run_ok(&["bench", "step", "--optimizer", "all", "--params", "20000", "--tensors", "3", "--steps", "3"]);
    assert!(text.contains("measured apart from the table"), "{text}");
    let pairs: Vec<&str> = text.lines().filter(|l| l.contains(" ns/param = ")).collect();
    assert_eq!(pairs.len(), 3, "{text}");
    for l in pairs {
        let (_, rest) = l.rsplit_once(": ").unwrap();
        let nums: Vec<f64> = rest
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|s| !s.is_empty() && *s != ".")
            .map(|s| s.parse().unwrap())
            .collect();
        let (b, a, r) = (nums[0], nums[1], nums[2]);
        assert!((b / a - r).abs() <= 0.006 + 0.002 * r, "{l}");
    }
}

/// The note on a preconditioner's refresh names the period the run used, from `--hparams` where it
/// is given, not the library's default.
#[test]
fn bench_step_describes_the_refresh_period_it_ran() {
    let text = run_ok(&[
        "bench",
        "step",
        "--model",
        "lenet",
        "--optimizer",
        "po.shampoo",
        "--steps",
        "2",
        "--threads",
        "1",
        "--hparams",
        r#"{"preconditioning_compute_steps": 7}"#,
    ]);
    assert!(text.contains("recomputed every 7 step(s) (preconditioning_compute_steps 7)"), "{text}");
}
