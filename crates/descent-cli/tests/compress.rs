//! `descent prune`, `descent quantize` and `descent compress-report` on a short MLP run.

mod common;

use common::{descent, out, run_err, run_ok};
use descent_train::compress::read_model;

/// The test accuracy a command ends with.
fn accuracy(text: &str, prefix: &str) -> f64 {
    let line = text.lines().rev().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` in {text}"));
    line[prefix.len()..].trim().trim_end_matches('%').parse().unwrap()
}

fn zeros(dir: &std::path::Path, name: &str) -> Vec<bool> {
    let (w, _) = read_model(&dir.join("model.safetensors")).unwrap();
    w.iter().find(|t| t.0 == name).unwrap().2.iter().map(|&x| x == 0.0).collect()
}

#[test]
fn prune_finetune_quantize_and_report_an_mlp() {
    let run = out("cmp-run");
    let r = run.to_str().unwrap();
    run_ok(&["train", "--model", "mlp", "--steps", "200", "--threads", "2", "--out", r]);

    // One-shot pruning, then the same masks fine-tuned: the pruned weights stay zero.
    let p = out("cmp-p50");
    let text = run_ok(&["prune", r, "--method", "l1_unstructured", "--amount", "0.5", "--out", p.to_str().unwrap()]);
    assert!(text.contains("50.00%"), "{text}");
    accuracy(&text, "test accuracy:");
    let f = out("cmp-p50ft");
    let text = run_ok(&[
        "prune",
        r,
        "--method",
        "l1_unstructured",
        "--amount",
        "0.5",
        "--out",
        f.to_str().unwrap(),
        "--finetune-epochs",
        "1",
        "--finetune-steps",
        "60",
        "--threads",
        "2",
    ]);
    accuracy(&text, "test accuracy:");
    // Fine-tuned further by a resume: the model file follows (evaluate, which reads the
    // checkpoint, and compress-report, which reads the model file, agree).
    run_ok(&["train", "--resume", f.to_str().unwrap(), "--steps", "80", "--threads", "2"]);
    let evaluated = accuracy(&run_ok(&["evaluate", f.to_str().unwrap(), "--threads", "2"]), "test accuracy:");
    let report = run_ok(&["compress-report", f.to_str().unwrap(), "--rounds", "1", "--threads", "1"]);
    assert!(report.contains(&format!("{evaluated:.2}%")), "evaluate {evaluated}%: {report}");
    for name in ["fc1.weight", "fc2.weight"] {
        let (one_shot, tuned) = (zeros(&p, name), zeros(&f, name));
        // fc1: 784·128 weights, half of them rounded: exactly 50176 zero.
        assert!(one_shot.iter().zip(&tuned).all(|(a, b)| !a || *b), "{name}: a pruned weight moved");
        if name == "fc1.weight" {
            assert_eq!(one_shot.iter().filter(|&&z| z).count(), 50_176);
        }
    }

    // A fine-tuning stopped before the prune wrote its model (here: its model file removed, as
    // after a kill) is a pruned folder from the start: resumed, it keeps its zeros, goes on as
    // the uninterrupted one (60 steps, then 20 more, as the resume above) and writes the model.
    let g = out("cmp-p50ft-cut");
    let flags = ["--method", "l1_unstructured", "--amount", "0.5", "--finetune-epochs", "1", "--threads", "2"];
    run_ok(&[&["prune", r, "--out", g.to_str().unwrap(), "--finetune-steps", "60"], &flags[..]].concat());
    std::fs::remove_file(g.join("model.safetensors")).unwrap();
    assert!(g.join("compress.json").is_file());
    run_ok(&["train", "--resume", g.to_str().unwrap(), "--steps", "80", "--threads", "2"]);
    assert_eq!(std::fs::read(g.join("steps.csv")).unwrap(), std::fs::read(f.join("steps.csv")).unwrap());
    assert_eq!(zeros(&g, "fc1.weight"), zeros(&f, "fc1.weight"));
    // And the prune can be made again into its own folder.
    run_ok(&[&["prune", r, "--out", g.to_str().unwrap(), "--force", "--finetune-steps", "10"], &flags[..]].concat());

    // Structured: half of the hidden units, and the compact model without them.
    let s = out("cmp-s50");
    let text = run_ok(&[
        "prune",
        r,
        "--method",
        "ln_structured",
        "--amount",
        "0.5",
        "--n",
        "2",
        "--dim",
        "0",
        "--out",
        s.to_str().unwrap(),
    ]);
    let (c, _) = read_model(&s.join("compact.safetensors")).unwrap();
    assert_eq!(c.iter().find(|t| t.0 == "fc1.weight").unwrap().1, vec![64, 784], "{text}");
    let masked = accuracy(&text, "test accuracy:");

    // int8: close to f32.
    let q = out("cmp-q");
    let text = run_ok(&["quantize", r, "--out", q.to_str().unwrap(), "--calibration-batches", "4"]);
    let (f32_acc, int8_acc) = (accuracy(&text, "f32 test accuracy:"), accuracy(&text, "test accuracy:"));
    assert!((f32_acc - int8_acc).abs() < 1.0, "{text}");
    let size = std::fs::metadata(q.join("model.int8.safetensors")).unwrap().len();
    assert!(size < 110_000, "{size} bytes for 101 770 int8 parameters");

    let text =
        run_ok(&["compress-report", s.to_str().unwrap(), q.to_str().unwrap(), "--rounds", "1", "--threads", "1"]);
    assert!(text.contains("(compact)") && text.contains("int8"), "{text}");
    assert!(text.contains(&format!("{masked:.2}%")), "{text}");

    // Refusals, one line each, naming the flag.
    let e = run_err(&["prune", r, "--method", "l1_unstructured", "--amount", "1.5", "--out", "/tmp/x"]);
    assert!(e.contains("--amount 1.5") && e.lines().count() == 1, "{e}");
    let e = run_err(&["prune", r, "--method", "global_unstructured", "--amount", "999999", "--out", "/tmp/x"]);
    assert!(e.contains("--amount 999999") && e.contains("101632"), "{e}");
    let e = run_err(&["train", "--resume", q.to_str().unwrap()]);
    assert!(e.contains("int8") && e.lines().count() == 1, "{e}");
    // A quantized model's folder is no run to replace or continue: no --force or --resume advice.
    let e = run_err(&["train", "--model", "mlp", "--out", q.to_str().unwrap()]);
    assert!(e.contains("choose another --out") && !e.contains("--resume") && e.lines().count() == 1, "{e}");
    let e = run_err(&["quantize", q.to_str().unwrap(), "--out", "/tmp/x"]);
    assert!(e.contains("int8"), "{e}");
    let e = run_err(&["train", "--model", "mlp", "--prune-to", "1.2", "--out", "/tmp/x"]);
    assert!(e.contains("--prune-to 1.2") && e.lines().count() == 1, "{e}");
    // A structured pruning that would leave a layer without units fails before writing: no
    // folder that other commands would take for a pruned model.
    let empty = out("cmp-empty");
    let e = run_err(&["prune", r, "--method", "ln_structured", "--amount", "1.0", "--out", empty.to_str().unwrap()]);
    assert!(e.contains("every unit") && e.lines().count() == 1, "{e}");
    assert!(!empty.exists(), "a failed prune left {}", empty.display());
    for d in [run, p, f, s, q] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn gradual_pruning_and_models_quantize_refuses() {
    let run = out("cmp-lin");
    let r = run.to_str().unwrap();
    run_ok(&["train", "--model", "linear", "--steps", "20", "--out", r]);
    let e = run_err(&["quantize", r, "--out", "/tmp/x"]);
    assert!(e.contains("mlp and lenet") && e.lines().count() == 1, "{e}");
    // A flag of another method is refused even at its default value (it was accepted and had
    // no effect).
    let e = run_err(&["quantize", r, "--out", "/tmp/x", "--percentile", "99.99"]);
    assert!(e.contains("--percentile") && e.contains("--calibration percentile"), "{e}");
    for flag in [["--n", "2"], ["--dim", "0"]] {
        let e = run_err(&[
            "prune",
            r,
            "--method",
            "l1_unstructured",
            "--amount",
            "0.5",
            flag[0],
            flag[1],
            "--out",
            "/tmp/x",
        ]);
        assert!(e.contains("--n / --dim") && e.contains("ln_structured"), "{e}");
    }
    // A run whose path is not UTF-8 trains, but its path cannot be recorded in compress.json:
    // refused before the output folder is made.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let mut name = format!("descent-cli-odd-{}-", std::process::id()).into_bytes();
        name.extend_from_slice(b"\xff\xfe");
        let odd = run.with_file_name(std::ffi::OsStr::from_bytes(&name));
        let _ = std::fs::remove_dir_all(&odd);
        std::fs::rename(&run, &odd).unwrap();
        let pruned = out("cmp-odd-pruned");
        let o = descent()
            .arg("prune")
            .arg(&odd)
            .args(["--method", "l1_unstructured", "--amount", "0.5", "--out"])
            .arg(&pruned)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains("not a UTF-8 path") && e.lines().count() == 1, "{e}");
        assert!(!pruned.exists(), "{e}");
        std::fs::rename(&odd, &run).unwrap();
    }
    let g = out("cmp-grad");
    let text = run_ok(&[
        "train",
        "--model",
        "mlp",
        "--steps",
        "120",
        "--prune-to",
        "0.8",
        "--prune-end",
        "100",
        // Not a divisor of the 100 steps: the end is a pruning step all the same.
        "--prune-frequency",
        "30",
        "--threads",
        "2",
        "--out",
        g.to_str().unwrap(),
    ]);
    assert!(text.contains("test accuracy:"), "{text}");
    let ck = descent_train::checkpoint::Checkpoint::load(&g.join("checkpoint.safetensors")).unwrap();
    for (n, _, w) in ck.weights.iter().filter(|t| t.0.ends_with("weight")) {
        let z = w.iter().filter(|&&x| x == 0.0).count();
        assert_eq!(z, (0.8 * w.len() as f64).round() as usize, "{n}");
    }
    // The linear run among others in a report is refused by name, whatever its place (its
    // synthetic test set is not the MNIST one another folder loaded first).
    let e = run_err(&["compress-report", "--rounds", "1", g.to_str().unwrap(), r]);
    assert!(e.contains(r) && e.contains("synthetic") && e.lines().count() == 1, "{e}");
    // A pruned linear run evaluates on its run's synthetic test set, as the run itself does.
    let lp = out("cmp-lin-pruned");
    run_ok(&["prune", r, "--method", "l1_unstructured", "--amount", "0.5", "--out", lp.to_str().unwrap()]);
    let loss = |t: &str| t.lines().find(|l| l.starts_with("test loss:")).map(String::from);
    let (a, b) = (run_ok(&["evaluate", lp.to_str().unwrap()]), run_ok(&["evaluate", r]));
    assert!(loss(&a).is_some() && loss(&a) == loss(&b), "{a}\n{b}");
    for d in [run, g, lp] {
        std::fs::remove_dir_all(d).ok();
    }
}

/// A run trained on two replicas with a sharded optimizer state is pruned and fine-tuned in one
/// process: how the run was spread is not a setting the fine-tuning inherits.
#[test]
fn a_run_trained_on_replicas_is_fine_tuned_in_one_process() {
    let (run, pruned) = (out("cmp-dp-run"), out("cmp-dp-pruned"));
    let r = run.to_str().unwrap();
    run_ok(&[
        "train",
        "--model",
        "mlp",
        "--steps",
        "20",
        "--threads",
        "2",
        "--data-parallel",
        "2",
        "--shard-optimizer",
        "--out",
        r,
    ]);
    let text = run_ok(&[
        "prune",
        r,
        "--method",
        "l1_unstructured",
        "--amount",
        "0.5",
        "--out",
        pruned.to_str().unwrap(),
        "--finetune-epochs",
        "1",
        "--finetune-steps",
        "5",
    ]);
    assert!(text.contains("fine-tuning with the masks"), "{text}");
    accuracy(&text, "test accuracy:");
    for d in [run, pruned] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `--force` of prune and quantize replaces only an earlier output of theirs: never a training run
/// and never the run being compressed; and `train --force` never replaces their output.
#[test]
fn force_replaces_only_compressed_outputs() {
    let (run, other, q) = (out("cmp-force-run"), out("cmp-force-other"), out("cmp-force-q"));
    let (r, o, qs) = (run.to_str().unwrap(), other.to_str().unwrap(), q.to_str().unwrap());
    for d in [r, o] {
        run_ok(&["train", "--model", "mlp", "--steps", "3", "--threads", "1", "--out", d]);
    }
    for (args, needle) in [
        (vec!["quantize", r, "--out", o, "--force"], "a training run's folder"),
        (vec!["quantize", r, "--out", r, "--force"], "the run being compressed"),
        (
            vec!["prune", r, "--method", "l1_unstructured", "--amount", "0.3", "--out", r, "--force"],
            "the run being compressed",
        ),
    ] {
        let err = run_err(&args);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    for d in [&run, &other] {
        assert!(d.join("checkpoint.safetensors").exists() && d.join("config.json").exists(), "{}", d.display());
    }
    // Fine-tuning settings a run would refuse are refused before anything is pruned, named by
    // prune's own flags.
    let never = out("cmp-force-never");
    let prune = ["prune", r, "--method", "l1_unstructured", "--amount", "0.5", "--finetune-epochs", "1"];
    for (extra, needle) in [(["--finetune-steps", "0"], "--finetune-steps 0"), (["--lr", "-1"], "--lr -1")] {
        let args = [&prune[..], &extra[..], &["--out", never.to_str().unwrap()][..]].concat();
        common::one_line_error(&args, &[needle]);
        assert!(!never.exists(), "{args:?} left its folder");
    }
    run_ok(&["quantize", r, "--out", qs]);
    run_ok(&["quantize", r, "--out", qs, "--force"]);
    let err = run_err(&["train", "--model", "mlp", "--steps", "3", "--out", qs, "--force"]);
    assert!(err.contains("the output of descent prune or quantize"), "{err}");
    assert!(q.join("compress.json").exists());
    for d in [run, other, q] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A pruned folder names the run it came from: once another run is trained in that folder
/// (`train --force`: another batch size, standardized inputs), quantizing the pruned model would
/// calibrate and evaluate it with the new run's settings. Refused, naming both runs; a `bench
/// sweep` refuses a training run's folder as its --out.
#[test]
fn a_pruned_model_whose_run_was_replaced_is_refused() {
    let (run, p, q) = (out("cmp-replaced-run"), out("cmp-replaced-p"), out("cmp-replaced-q"));
    let (r, ps, qs) = (run.to_str().unwrap(), p.to_str().unwrap(), q.to_str().unwrap());
    run_ok(&["train", "--model", "mlp", "--steps", "5", "--threads", "1", "--out", r]);
    run_ok(&["prune", r, "--method", "l1_unstructured", "--amount", "0.3", "--out", ps]);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("compress.json")).unwrap()).unwrap();
    let id = info["source_run_id"].as_str().expect("the source run's id is recorded").to_string();
    // A field added to compress.json is an edit too: refused, naming it.
    let text = std::fs::read_to_string(p.join("compress.json")).unwrap();
    let mut edited = info.clone();
    edited["note"] = serde_json::json!("mine");
    std::fs::write(p.join("compress.json"), serde_json::to_string_pretty(&edited).unwrap()).unwrap();
    common::one_line_error(&["evaluate", ps], &["compress.json", "note"]);
    std::fs::write(p.join("compress.json"), text).unwrap();
    run_ok(&["evaluate", ps]);
    run_ok(&[
        "train",
        "--model",
        "mlp",
        "--steps",
        "5",
        "--batch-size",
        "64",
        "--normalize",
        "--threads",
        "1",
        "--out",
        r,
        "--force",
    ]);
    common::one_line_error(&["quantize", ps, "--out", qs], &[&id, "now holds another run"]);
    assert!(!q.exists(), "the refused quantize left its folder");
    common::one_line_error(
        &["bench", "sweep", "--out", r, "--seeds", "1", "--trials", "1", "--epochs", "1"],
        &["run folder"],
    );
    assert!(std::fs::read_dir(&run).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with("seed")));
    for d in [run, p, q] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Pruned and quantized model files carry a checksum, as checkpoints do: a flipped byte is refused
/// by the commands that read them instead of evaluated.
#[test]
fn compressed_model_files_are_verified_before_use() {
    let (run, q, p) = (out("cmp-verify-run"), out("cmp-verify-q"), out("cmp-verify-p"));
    let (r, qs, ps) = (run.to_str().unwrap(), q.to_str().unwrap(), p.to_str().unwrap());
    run_ok(&["train", "--model", "mlp", "--steps", "5", "--threads", "1", "--out", r]);
    run_ok(&["quantize", r, "--out", qs]);
    run_ok(&["prune", r, "--method", "l1_unstructured", "--amount", "0.5", "--out", ps]);
    for (dir, file) in [(&q, "model.int8.safetensors"), (&p, "model.safetensors")] {
        run_ok(&["evaluate", dir.to_str().unwrap()]);
        let f = dir.join(file);
        let mut bytes = std::fs::read(&f).unwrap();
        let at = bytes.len() - 10;
        bytes[at] ^= 1;
        std::fs::write(&f, bytes).unwrap();
        let err = run_err(&["evaluate", dir.to_str().unwrap()]);
        assert!(err.contains(file) && err.contains("checksum mismatch"), "{err}");
    }
    for d in [run, q, p] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Fine-tuning's --hparams goes over the run's optimizer arguments key by key (it replaced them:
/// the run's weight decay was dropped without a word).
#[test]
fn finetuning_hparams_merge_over_the_runs() {
    let run = out("cmp-hp");
    let r = run.to_str().unwrap();
    run_ok(&[
        "train",
        "--model",
        "mlp",
        "--steps",
        "30",
        "--optimizer",
        "adamw",
        "--hparams",
        r#"{"weight_decay": 0.5}"#,
        "--threads",
        "1",
        "--out",
        r,
    ]);
    let p = out("cmp-hp-ft");
    let args = [
        "prune",
        r,
        "--method",
        "l1_unstructured",
        "--amount",
        "0.5",
        "--finetune-epochs",
        "1",
        "--finetune-steps",
        "5",
    ];
    run_ok(
        &[&args[..], &["--hparams", r#"{"betas": [0.8, 0.9]}"#, "--threads", "1", "--out", p.to_str().unwrap()]]
            .concat(),
    );
    let config = |d: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap()
    };
    let cfg = config(&p);
    assert_eq!(cfg["hparams"], serde_json::json!({"weight_decay": 0.5, "betas": [0.8, 0.9]}), "{cfg}");
    // The run's own optimizer named again keeps its arguments; a rate in --hparams replaces the
    // run's (it was blamed on a --lr nobody gave).
    let q = out("cmp-hp-ft2");
    let own = ["--optimizer", "torch.adamw", "--hparams", r#"{"eps": 1e-6, "lr": 0.01}"#];
    run_ok(&[&args[..], &own, &["--threads", "1", "--out", q.to_str().unwrap()]].concat());
    let cfg = config(&q);
    assert_eq!(cfg["hparams"], serde_json::json!({"weight_decay": 0.5, "eps": 1e-6}), "{cfg}");
    assert_eq!(cfg["lr"], serde_json::json!(0.01), "{cfg}");
    for d in [run, p, q] {
        std::fs::remove_dir_all(d).ok();
    }
}

/// Folders a prune or quantize must not take: an output inside the run it compresses (stale once
/// the run is replaced), a pruned run fine-tuned by `prune` as a run to prune again (its amount
/// would fall on its zeros), a fine-tuned prune whose fine-tuning has not finished (named, not the
/// missing model file's error). And `--dim -2` on an MLP is its output units, as `--dim 0`: the
/// compact model is written for both.
#[test]
fn nested_outputs_pruned_runs_and_unfinished_finetuning_are_refused() {
    let run = out("cmp-nest-run");
    let r = run.to_str().unwrap();
    run_ok(&["train", "--model", "mlp", "--steps", "30", "--threads", "1", "--out", r]);
    let inside = run.join("pruned");
    let e = run_err(&["prune", r, "--method", "l1_unstructured", "--amount", "0.5", "--out", inside.to_str().unwrap()]);
    assert!(e.contains("inside the run being compressed"), "{e}");
    assert!(!inside.exists());
    let ft = out("cmp-nest-ft");
    let f = ft.to_str().unwrap();
    #[rustfmt::skip]
    run_ok(&["prune", r, "--method", "l1_unstructured", "--amount", "0.5", "--finetune-epochs", "1", "--finetune-steps", "3",
        "--threads", "1", "--out", f]);
    let again = out("cmp-nest-again");
    let e = run_err(&["prune", f, "--method", "l1_unstructured", "--amount", "0.3", "--out", again.to_str().unwrap()]);
    assert!(e.contains("the output of descent prune or quantize") && e.contains("larger amount"), "{e}");
    // The fine-tuning stopped before its model was written.
    std::fs::remove_file(ft.join("model.safetensors")).unwrap();
    let q = out("cmp-nest-q");
    let e = run_err(&["quantize", f, "--out", q.to_str().unwrap()]);
    assert!(e.contains("fine-tuning has not finished") && e.contains("--resume"), "{e}");
    let e = run_err(&["compress-report", f, "--rounds", "1"]);
    assert!(e.contains("fine-tuning has not finished"), "{e}");
    let d2 = out("cmp-nest-dim");
    let text = run_ok(&[
        "prune",
        r,
        "--method",
        "ln_structured",
        "--amount",
        "0.5",
        "--dim",
        "-2",
        "--out",
        d2.to_str().unwrap(),
    ]);
    assert!(text.contains("compact model") && d2.join("compact.safetensors").exists(), "{text}");
}

/// A fine-tuning whose optimizer evaluates other weights than it steps (schedule-free's average)
/// would keep the masks on weights it does not evaluate: refused before anything is pruned,
/// naming --optimizer; another optimizer fine-tunes the same run.
#[test]
fn a_finetuning_optimizer_the_masks_cannot_reach_is_refused_first() {
    let (run, p) = (out("cmp-sf-run"), out("cmp-sf-p"));
    let (r, ps) = (run.to_str().unwrap(), p.to_str().unwrap());
    run_ok(&[
        "train",
        "--model",
        "mlp",
        "--optimizer",
        "schedule_free_adamw",
        "--steps",
        "30",
        "--threads",
        "1",
        "--out",
        r,
    ]);
    let prune = [
        "prune",
        r,
        "--method",
        "l1_unstructured",
        "--amount",
        "0.5",
        "--finetune-epochs",
        "1",
        "--finetune-steps",
        "5",
    ];
    common::one_line_error(
        &[&prune[..], &["--out", ps]].concat(),
        &["--finetune-epochs", "schedule_free_adamw", "--optimizer"],
    );
    assert!(!p.exists(), "the refused prune left its folder");
    run_ok(&[&prune[..], &["--optimizer", "adamw", "--out", ps]].concat());
    for d in [run, p] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A run trained with `--validation N` calibrates its int8 model on the samples it trained on,
/// not on the ones it held out: its training batches are the first 55 000 images' (1 719 of 32),
/// and the compressed model is evaluated on the test set as `descent evaluate` evaluates it.
#[test]
fn a_validation_run_calibrates_on_its_own_training_samples() {
    let dir = out("qval");
    let (run, q) = (dir.join("run"), dir.join("q"));
    let (r, qs) = (run.to_str().unwrap(), q.to_str().unwrap());
    run_ok(&["train", "--model", "mlp", "--steps", "20", "--threads", "1", "--validation", "5000", "--out", r]);
    let e = run_err(&["quantize", r, "--out", qs, "--calibration-batches", "1875"]);
    assert!(e.contains("1719 batches"), "{e}");
    let text = run_ok(&["quantize", r, "--out", qs, "--calibration-batches", "1719"]);
    let reported = accuracy(&text, "test accuracy: ");
    let evaluated = accuracy(&run_ok(&["evaluate", qs]), "test accuracy: ");
    assert_eq!(reported, evaluated);
    // A prune fine-tuned with --force replaces the quantized folder, as a prune without
    // fine-tuning does.
    let prune = ["prune", r, "--method", "l1_unstructured", "--amount", "0.5", "--out", qs, "--force"];
    run_ok(&[&prune[..], &["--finetune-epochs", "1", "--finetune-steps", "5"]].concat());
    assert!(q.join("model.safetensors").exists() && !q.join("model.int8.safetensors").exists());
}
