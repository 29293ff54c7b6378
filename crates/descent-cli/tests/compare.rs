//! `descent compare`, `descent plot` and TensorBoard output as a user runs them.

use std::path::{Path, PathBuf};
mod common;

use common::{csv_rows, out, run_err, run_ok};

/// Each picture decodes as a PNG of the chart size, and its SVG twin is an SVG of that size.
fn check_pictures(dir: &Path, names: &[&str], size: (u32, u32)) {
    for name in names {
        let png = image::open(dir.join(format!("{name}.png"))).unwrap_or_else(|e| panic!("{name}.png: {e}"));
        assert_eq!((png.width(), png.height()), size, "{name}.png");
        // Not a blank canvas: a chart has many colours.
        let rgb = png.to_rgb8();
        let colours: std::collections::HashSet<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
        assert!(colours.len() > 20, "{name}.png has {} colours", colours.len());
        let svg = std::fs::read_to_string(dir.join(format!("{name}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains(&format!("width=\"{}\"", size.0)), "{name}.svg");
        assert!(svg.trim_end().ends_with("</svg>"), "{name}.svg is complete");
    }
}

/// When every run fails, nothing was compared: the table says why and the command fails with the
/// first run's reason (a script must not take it for a comparison).
#[test]
fn compare_fails_when_every_run_fails() {
    let dir = out("allfail");
    let err = run_err(&[
        "compare",
        "--model",
        "linear",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--run",
        "sgd:lr=1e30",
        "--run",
        "sgd:lr=1e31",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(err.contains("every run failed") && err.contains("step"), "{err}");
    let rows = csv_rows(&dir.join("table.csv"));
    assert!(rows.len() == 2 && rows.iter().all(|r| r[8].starts_with("failed")), "{rows:?}");
}

/// The table's numbers are those of the same runs made alone with `descent train` (the run
/// folders hold the same per-step metrics, bit for bit); a diverging run is marked failed while the
/// others finish; the charts and the report are written.
#[test]
fn compare_equals_runs_made_alone_and_marks_a_diverged_run() {
    let dir = out("table");
    let d = dir.to_str().unwrap();
    run_ok(&[
        "compare",
        "--model",
        "linear",
        "--epochs",
        "2",
        "--threads",
        "1",
        "--run",
        "sgd:lr=0.1",
        "--run",
        "adam:lr=0.05,betas=[0.8,0.99]",
        "--run",
        "sgd:lr=1e30",
        "--out",
        d,
    ]);
    let rows = csv_rows(&dir.join("table.csv"));
    assert_eq!(rows.len(), 3);
    assert!(rows[2].iter().any(|c| c.contains("failed") && c.contains("step")), "{:?}", rows[2]);
    for (row, args) in rows[..2].iter().zip([
        vec!["--optimizer", "sgd", "--lr", "0.1"],
        vec!["--optimizer", "adam", "--lr", "0.05", "--hparams", "{\"betas\": [0.8, 0.99]}"],
    ]) {
        assert_eq!(row[8], "finished", "{row:?}");
        let alone = out(&format!("alone-{}", args[1]));
        let mut a =
            vec!["train", "--model", "linear", "--epochs", "2", "--threads", "1", "--out", alone.to_str().unwrap()];
        a.extend(args.iter().copied());
        run_ok(&a);
        let last: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(alone.join("metrics.jsonl")).unwrap().lines().last().unwrap())
                .unwrap();
        assert_eq!(row[1], last["train_loss"].as_f64().unwrap().to_string(), "{row:?}");
        assert_eq!(row[2], last["test_loss"].as_f64().unwrap().to_string(), "{row:?}");
        let run_dir = PathBuf::from(row.last().unwrap());
        assert_eq!(
            std::fs::read_to_string(run_dir.join("steps.jsonl")).unwrap(),
            std::fs::read_to_string(alone.join("steps.jsonl")).unwrap(),
            "{row:?}"
        );
    }
    check_pictures(&dir, &["loss", "grad_norm", "lr", "test_loss"], (960, 600));
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<table>") && html.contains("loss.svg") && html.contains("sgd:lr=0.1"));
    assert!(std::fs::read_to_string(dir.join("table.md")).unwrap().contains("| adam:lr=0.05,betas=[0.8,0.99] |"));
    // `plot` of the folder draws the failed run as failed, as the compare's charts do.
    let pics = out("table-plot");
    run_ok(&["plot", d, "--out", pics.to_str().unwrap()]);
    let svg = std::fs::read_to_string(pics.join("loss.svg")).unwrap();
    assert!(svg.contains("sgd:lr=1e30 (failed)"), "the legend does not mark the failed run");
    // A target accuracy for a regression, which measures none, is refused.
    let e = run_err(&["compare", "--model", "linear", "--run", "sgd", "--target", "50", "--out", d, "--force"]);
    assert!(e.contains("--target 50") && e.contains("without accuracy"), "{e}");
    // An existing folder is not overwritten without --force.
    let e = run_err(&["compare", "--model", "linear", "--run", "sgd", "--out", d]);
    assert!(e.contains("exists") && e.contains("--force"), "{e}");
    // With --force, a run folder of the user's where a new label's run would go is refused
    // before anything is deleted.
    let mine = dir.join("runs").join("01-mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "mine").unwrap();
    let before: Vec<_> = std::fs::read_dir(dir.join("runs")).unwrap().map(|e| e.unwrap().file_name()).collect();
    let e = run_err(&["compare", "--model", "linear", "--run", "sgd:label=mine", "--out", d, "--force"]);
    assert!(e.contains("run `mine`") && e.contains("notes.txt") && e.lines().count() == 1, "{e}");
    let after: Vec<_> = std::fs::read_dir(dir.join("runs")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before.len(), after.len(), "runs deleted before the refusal");
    std::fs::remove_dir_all(&mine).unwrap();
    // A run of the comparison trained further on its own would disagree with the table: refused,
    // naming the comparison, and pointing to a run of one's own from its settings.
    let run = PathBuf::from(rows[0].last().unwrap());
    let e = run_err(&["train", "--resume", run.to_str().unwrap(), "--epochs", "3"]);
    assert!(e.contains("the compare folder") && e.contains("config.toml"), "{e}");
}

#[test]
fn unknown_optimizers_and_options_in_a_run_are_named() {
    let dir = out("bad");
    let d = dir.to_str().unwrap();
    for (run, needles) in [
        ("adamz:lr=0.1", vec!["adamz", "run 1"]),
        ("sgd:lr=0.1,momentom=0.9", vec!["momentom", "momentum"]),
        ("sgd:data=data/mnist", vec!["data", "shared"]),
        ("sgd:lr", vec!["lr", "key=value"]),
        // A training setting no run varies: named as such, not as an unknown optimizer argument.
        ("sgd:accumulate=2", vec!["`accumulate` is a training setting", "--accumulate"]),
    ] {
        let e = run_err(&["compare", "--model", "linear", "--run", run, "--out", d]);
        for n in needles {
            assert!(e.contains(n), "{run}: {e}");
        }
        assert!(!dir.exists(), "{run}: nothing written before the runs are valid");
    }
    // A number a double cannot hold, said so; a shared --optimizer, which every run's own
    // optimizer would leave unused, refused.
    let e = run_err(&["compare", "--model", "linear", "--run", "sgd:lr=1e309", "--out", d]);
    assert!(e.contains("`lr`") && e.contains("largest a double holds"), "{e}");
    let e = run_err(&["compare", "--model", "linear", "--optimizer", "adam", "--run", "sgd:lr=0.1", "--out", d]);
    assert!(e.contains("--optimizer") && e.contains("each run names its own"), "{e}");
    // Labels a table or legend cannot show: not a name, blank, or with a newline.
    let cfg = common::out("labels.toml");
    for label in ["true", "\"  \"", "\"two\\nlines\""] {
        std::fs::write(&cfg, format!("[[run]]\noptimizer = \"sgd\"\nlabel = {label}\n")).unwrap();
        let e = run_err(&["compare", "--model", "linear", "--config", cfg.to_str().unwrap(), "--out", d]);
        assert!(e.contains("[[run]] 1") && e.contains("`label`"), "{label}: {e}");
    }
    let _ = std::fs::remove_file(&cfg);
    assert!(!dir.exists());
}

/// Runs from a TOML file: shared settings at the top, `[[run]]` tables.
#[test]
fn compare_from_a_toml_file() {
    let dir = out("toml");
    let cfg_file = out("toml.toml");
    let cfg = cfg_file.to_path_buf();
    std::fs::write(
        &cfg,
        "model = \"linear\"\nepochs = 1\nthreads = 1\n\n[[run]]\noptimizer = \"sgd\"\nlr = 0.1\nmomentum = 0.9\n\n\
         [[run]]\noptimizer = \"rmsprop\"\nlr = 0.01\nlabel = \"rms\"\n",
    )
    .unwrap();
    run_ok(&["compare", "--config", cfg.to_str().unwrap(), "--out", dir.to_str().unwrap()]);
    let rows = csv_rows(&dir.join("table.csv"));
    assert_eq!(rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(), ["sgd lr=0.1 momentum=0.9", "rms"]);
}

/// `descent plot` redraws from run folders; a metric file cut mid-line (a run killed while writing)
/// is read up to its last complete line, with a warning that says so.
#[test]
fn plot_redraws_runs_and_reads_a_truncated_file_up_to_its_last_line() {
    let (a, b, pics) = (out("plot-a"), out("plot-b"), out("plot-out"));
    run_ok(&["train", "--model", "linear", "--epochs", "2", "--threads", "1", "--out", a.to_str().unwrap()]);
    run_ok(&[
        "train",
        "--model",
        "linear",
        "--optimizer",
        "adam",
        "--lr",
        "0.05",
        "--threads",
        "1",
        "--out",
        b.to_str().unwrap(),
    ]);
    let steps = std::fs::read_to_string(b.join("steps.jsonl")).unwrap();
    let cut = &steps[..steps.len() - 20];
    std::fs::write(b.join("steps.jsonl"), cut).unwrap();
    let text = run_ok(&["plot", a.to_str().unwrap(), b.to_str().unwrap(), "--out", pics.to_str().unwrap()]);
    assert!(text.contains("incomplete") && text.contains("steps.jsonl"), "{text}");
    assert!(text.contains("2 runs drawn"), "{text}");
    check_pictures(&pics, &["loss", "grad_norm", "lr", "test_loss"], (960, 600));
    // Runs of other kinds together: each evaluation chart has its own runs (a gpt's validation
    // loss by step beside the regression's test loss by epoch), none dropped.
    let g = out("plot-gpt");
    run_ok(&[common::TINY_GPT, &["--steps", "4", "--out", g.to_str().unwrap()]].concat());
    let mixed = out("plot-mixed");
    let text = run_ok(&["plot", a.to_str().unwrap(), g.to_str().unwrap(), "--out", mixed.to_str().unwrap()]);
    assert!(text.contains("2 runs drawn"), "{text}");
    check_pictures(&mixed, &["loss", "test_loss", "val_loss"], (960, 600));
    // A run given twice, and runs with nothing to draw, are refused rather than drawn empty.
    let e = run_err(&["plot", a.to_str().unwrap(), a.to_str().unwrap(), "--out", mixed.to_str().unwrap()]);
    assert!(e.contains("given twice"), "{e}");
    for f in ["steps.jsonl", "steps.csv", "metrics.jsonl", "metrics.csv"] {
        std::fs::write(b.join(f), "").unwrap();
    }
    let e = run_err(&["plot", b.to_str().unwrap(), "--out", mixed.to_str().unwrap()]);
    assert!(e.contains("nothing to draw"), "{e}");
    // Beside a run with rows, an empty one is counted as not drawn.
    let one = out("plot-one");
    let text = run_ok(&["plot", a.to_str().unwrap(), b.to_str().unwrap(), "--out", one.to_str().unwrap()]);
    assert!(text.contains("1 runs drawn") && text.contains("(1 without a row to draw)"), "{text}");
    let svg = |name: &str| std::fs::read_to_string(mixed.join(format!("{name}.svg"))).unwrap();
    // The gpt's recipe (torch.adamw, warm-up and cosine) in the validation chart alone.
    assert!(svg("val_loss").contains("torch.adamw") && !svg("test_loss").contains("torch.adamw"));
    assert!(svg("test_loss").contains("adam lr=") && !svg("val_loss").contains("adam lr="));
    let huge = out("plot-huge");
    // A complete last line that does not read is damage, not a cut write: an error, as anywhere
    // else in the file.
    std::fs::write(b.join("steps.jsonl"), format!("{}garbage\n", &steps[..steps.find('\n').unwrap() + 1])).unwrap();
    let e = run_err(&["plot", b.to_str().unwrap(), "--out", huge.to_str().unwrap()]);
    assert!(e.contains("steps.jsonl: line 2"), "{e}");
    // Values near the end of the doubles (a diverged run's gradient norm) draw on finite axes,
    // in finite time (the log axis's padding had reached infinity and its ticks never ended).
    let mut rows: Vec<serde_json::Value> = steps.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    rows[0]["grad_norm"] = serde_json::json!(1e300);
    std::fs::write(b.join("steps.jsonl"), rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    run_ok(&["plot", a.to_str().unwrap(), b.to_str().unwrap(), "--out", huge.to_str().unwrap()]);
    check_pictures(&huge, &["grad_norm"], (960, 600));
    for d in [a, b, pics, g, mixed, huge] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `--tensorboard` writes event files whose records (checksums verified) hold the run's scalars:
/// one training loss per step equal to steps.jsonl, and the test loss per epoch.
#[test]
fn tensorboard_event_files_parse_and_hold_the_metrics() {
    let dir = out("tb");
    run_ok(&[
        "train",
        "--model",
        "linear",
        "--epochs",
        "2",
        "--threads",
        "1",
        "--tensorboard",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let tb = dir.join("tensorboard");
    let file = std::fs::read_dir(&tb).unwrap().next().unwrap().unwrap().path();
    assert!(file.file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents."));
    let mut losses = vec![];
    let mut tags = std::collections::BTreeSet::new();
    let mut first = true;
    for e in tfrecord::EventIter::open(&file, Default::default()).unwrap() {
        let e = e.unwrap();
        match e.what {
            Some(tfrecord::protobuf::event::What::FileVersion(v)) => {
                assert!(first);
                assert_eq!(v, "brain.Event:2");
            }
            Some(tfrecord::protobuf::event::What::Summary(s)) => {
                for v in s.value {
                    let Some(tfrecord::protobuf::summary::value::Value::SimpleValue(x)) = v.value else { panic!() };
                    if v.tag == "train/loss" {
                        losses.push((e.step, x));
                    }
                    tags.insert(v.tag);
                }
            }
            other => panic!("unexpected event {other:?}"),
        }
        first = false;
    }
    for t in ["train/loss", "train/lr", "train/grad_norm", "epoch/test_loss", "epoch/train_loss", "epoch/samples_per_s"]
    {
        assert!(tags.contains(t), "{t} in {tags:?}");
    }
    let steps: Vec<(i64, f32)> = std::fs::read_to_string(dir.join("steps.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_i64().unwrap(), v["loss"].as_f64().unwrap() as f32)
        })
        .collect();
    assert_eq!(losses, steps);
}

/// `descent landscape`: the pictures decode at their size, and the table's end point of plain SGD
/// is `p ← p − η ∇f(p)` iterated in f32 on Rosenbrock's analytic gradient, computed here.
#[test]
fn landscape_paths_are_plain_gradient_steps_and_pictures_decode() {
    let dir = out("land");
    let d = dir.to_str().unwrap();
    run_ok(&[
        "landscape",
        "--function",
        "rosenbrock",
        "--function",
        "saddle",
        "--run",
        "sgd:lr=0.001",
        "--run",
        "adam:lr=0.05,schedule=cosine",
        "--steps",
        "40",
        "--out",
        d,
    ]);
    check_pictures(&dir, &["rosenbrock", "saddle"], (900, 760));
    let rows = csv_rows(&dir.join("table.csv"));
    assert_eq!(rows.len(), 4);
    let (mut x, mut y) = (-1.5f32, 2.0f32);
    for _ in 0..40 {
        let (xd, yd) = (x as f64, y as f64);
        let (gx, gy) = (-2.0 * (1.0 - xd) - 400.0 * xd * (yd - xd * xd), 200.0 * (yd - xd * xd));
        (x, y) = (x - 0.001 * gx as f32, y - 0.001 * gy as f32);
    }
    assert_eq!((rows[0][0].as_str(), rows[0][1].as_str()), ("rosenbrock", "sgd:lr=0.001"));
    assert_eq!(rows[0][2].parse::<f64>().unwrap() as f32, x);
    assert_eq!(rows[0][3].parse::<f64>().unwrap() as f32, y);
    for (args, needles) in [
        (vec!["--function", "sphere"], vec!["sphere", "rosenbrock"]),
        (vec!["--run", "adamz:lr=1"], vec!["adamz", "run 1"]),
        (vec!["--run", "sgd:lr=0.1,schedule=plateau"], vec!["plateau", "per epoch"]),
        // The same setting twice (the `lr` won, the explicit rate was dropped).
        (vec!["--run", "optax.adam:learning_rate=0.5,lr=0.1"], vec!["`lr` and `learning_rate`", "give one"]),
    ] {
        let mut a = vec!["landscape", "--out", "/nonexistent/never-written"];
        a.extend(args);
        let e = run_err(&a);
        for n in needles {
            assert!(e.contains(n), "{a:?}: {e}");
        }
    }
}

/// `label=NAME` in a --run names the run in the table and its folder, as a [[run]] table's
/// `label` does; two runs with one label are refused.
#[test]
fn a_run_spec_label_names_the_run() {
    let dir = out("labels");
    let d = dir.to_str().unwrap();
    let base = ["compare", "--model", "linear", "--steps", "20", "--threads", "1", "--jobs", "1", "--out", d];
    let mut args = base.to_vec();
    args.extend(["--run", "adam:label=fast,lr=0.1", "--run", "adam:label=slow"]);
    run_ok(&args);
    let table = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert!(table.contains("| fast |") && table.contains("| slow |"), "{table}");
    assert!(dir.join("runs/01-fast").is_dir() && dir.join("runs/02-slow").is_dir());
    // `plot` of the compare folder names its runs as the compare's own charts do.
    let pics = out("labels-plot");
    run_ok(&["plot", d, "--out", pics.to_str().unwrap()]);
    let svg = std::fs::read_to_string(pics.join("loss.svg")).unwrap();
    let texts: Vec<&str> = svg.lines().map(str::trim).collect();
    assert!(texts.contains(&"fast") && texts.contains(&"slow"), "the legend names the runs otherwise");
    // A label is text as written, whatever it looks like.
    let mut texts = base.to_vec();
    texts.extend([
        "--run",
        "adam:label=1e-3",
        "--run",
        "adam:label=true,lr=0.1",
        "--run",
        "adam:label=1e400",
        "--force",
    ]);
    run_ok(&texts);
    let table = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert!(table.contains("| 1e-3 |") && table.contains("| true |") && table.contains("| 1e400 |"), "{table}");
    let mut twice = base.to_vec();
    twice.extend(["--run", "adam:label=x", "--run", "adam:label=x,lr=0.1", "--force"]);
    let e = run_err(&twice);
    assert!(e.contains("`x`"), "{e}");
}

/// An argument both in a run's `hparams` and as its own key is refused (neither silently wins);
/// `[[run]]` tables that differ only in a training setting (`seed`) get labels that say so.
#[test]
fn run_conflicts_are_refused_and_table_labels_name_every_setting() {
    let dir = out("table-labels");
    let d = dir.to_str().unwrap();
    let e = run_err(&[
        "compare",
        "--model",
        "linear",
        "--steps",
        "2",
        "--out",
        d,
        "--run",
        r#"sgd:hparams={"momentum":0.9},momentum=0.5"#,
    ]);
    assert!(e.contains("`momentum`") && e.contains("give it once"), "{e}");
    let cfg = out("table-labels.toml");
    std::fs::write(
        &*cfg,
        "model = \"linear\"\nsteps = 2\nthreads = 1\n\n[[run]]\noptimizer = \"sgd\"\nlr = 0.1\n\n\
         [[run]]\noptimizer = \"sgd\"\nlr = 0.1\nseed = 4\n",
    )
    .unwrap();
    run_ok(&["compare", "--config", cfg.to_str().unwrap(), "--out", d]);
    let rows = csv_rows(&dir.join("table.csv"));
    assert_eq!(rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(), ["sgd lr=0.1", "sgd lr=0.1 seed=4"]);
}

/// A comparison evaluated on held-out samples says so in its table, report and chart (a
/// validation accuracy is not a test accuracy), and runs that train on other data (gpt on text
/// beside an MNIST model) are refused before any trains.
#[test]
fn validation_runs_are_labelled_and_other_workloads_refused() {
    let dir = out("cmp-validation");
    let d = dir.to_str().unwrap();
    #[rustfmt::skip]
    run_ok(&["compare", "--model", "mlp", "--steps", "5", "--threads", "1", "--validation", "1000", "--out", d,
        "--run", "adam", "--run", "sgd:lr=0.1"]);
    let table = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert!(table.contains("validation accuracy") && !table.contains("test accuracy"), "{table}");
    let report = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(report.contains("validation accuracy") && !report.contains("test accuracy"));
    assert!(dir.join("val_accuracy.svg").exists() && !dir.join("accuracy.svg").exists());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("compare.json")).unwrap()).unwrap();
    assert_eq!(json["evaluated_on"], "validation");
    let mixed = out("cmp-mixed");
    #[rustfmt::skip]
    let e = run_err(&["compare", "--model", "mlp", "--steps", "5", "--threads", "1", "--out", mixed.to_str().unwrap(),
        "--run", "adam", "--run", "adamw:model=gpt"]);
    assert!(e.contains("gpt on text") && e.contains("mlp on MNIST"), "{e}");
    assert!(!mixed.exists());
}

/// A run of a compare stopped before its table is named as such on `--resume` (not as a run of a
/// compare that recorded its result), with what trains it again; so is one whose first
/// checkpoint was cut short.
#[test]
fn a_run_of_an_unfinished_compare_says_how_to_train_it_again() {
    let dir = out("cmp-unfinished");
    let d = dir.to_str().unwrap();
    run_ok(&[
        "compare",
        "--model",
        "linear",
        "--steps",
        "3",
        "--threads",
        "1",
        "--out",
        d,
        "--run",
        "sgd",
        "--run",
        "adam",
    ]);
    let run = std::fs::read_dir(dir.join("runs")).unwrap().next().unwrap().unwrap().path();
    let e = run_err(&["train", "--resume", run.to_str().unwrap(), "--steps", "5"]);
    assert!(e.contains("which recorded its result"), "{e}");
    std::fs::remove_file(dir.join("compare.json")).unwrap();
    let e = run_err(&["train", "--resume", run.to_str().unwrap(), "--steps", "5"]);
    assert!(e.contains("run the compare again with --force") && e.contains("--config"), "{e}");
    // Its first checkpoint cut short: named, with the compare (not train --force, which its folder refuses).
    std::fs::rename(run.join("checkpoint.safetensors"), run.join(".checkpoint.safetensors.tmp4321")).unwrap();
    let e = run_err(&["evaluate", run.to_str().unwrap()]);
    assert!(e.contains("stopped while writing its first one") && e.contains("run the compare again"), "{e}");
}
