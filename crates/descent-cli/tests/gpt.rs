//! `descent train --model gpt` and `descent sample` as a user runs them, on a tiny model (one
//! layer, 16 wide, windows of 16 characters) for a few steps.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{descent, one_line_error, run_err, run_ok, TINY_GPT};

fn tiny(extra: &[&str]) -> Vec<String> {
    TINY_GPT.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn run_ok_s(args: &[String]) -> String {
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
}

/// The first fields of each row of a CSV file (timings left out).
fn columns(dir: &Path, file: &str, n: usize) -> Vec<String> {
    read(dir, file).lines().map(|l| l.split(',').take(n).collect::<Vec<_>>().join(",")).collect()
}

/// One run of 8 steps with dropout and a schedule that moves within them, shared by the tests:
/// estimates every 4 steps.
fn base_run() -> &'static PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = common::out("gpt-base");
        let d = dir.to_string_lossy().to_string();
        let flags =
            ["--steps", "8", "--eval-interval", "4", "--dropout", "0.1", "--warmup-steps", "2", "--decay-steps", "8"];
        run_ok_s(&tiny(&[&flags[..], &["--out", &d]].concat()));
        dir.keep()
    })
}

#[test]
fn gpt_trains_and_writes_train_and_validation_loss() {
    let dir = common::out("gpt-train");
    let d = dir.to_string_lossy().to_string();
    let text = run_ok_s(&tiny(&["--steps", "6", "--eval-interval", "3", "--out", &d]));
    // Estimates before the first step, every 3 steps and at the end, in nats per character:
    // from about ln 65 ≈ 4.17 (a uniform guess over the vocabulary).
    let rows: Vec<serde_json::Value> =
        read(&dir, "metrics.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let at: Vec<u64> = rows.iter().map(|r| r["steps"].as_u64().unwrap()).collect();
    assert_eq!(at, [0, 3, 6], "{text}");
    for r in &rows {
        for key in ["train_loss", "test_loss"] {
            let v = r[key].as_f64().unwrap();
            assert!((v - 65f64.ln()).abs() < 0.3, "{key} {v}: {r}");
        }
        assert!(r["test_accuracy"].is_null());
    }
    assert_eq!(read(&dir, "steps.jsonl").lines().count(), 6);
    assert!(text.contains("step 3: train loss") && text.contains("val loss"), "{text}");
    let last = text.lines().last().unwrap();
    assert!(
        last.starts_with("validation loss: ") && last.contains("nats/char") && last.contains("after 6 steps"),
        "{text}"
    );
    // The recipe's settings are in the run's config.
    let cfg: serde_json::Value = serde_json::from_str(&read(&dir, "config.json")).unwrap();
    assert_eq!(cfg["optimizer"], "torch.adamw");
    assert_eq!(cfg["hparams"], serde_json::json!({"betas": [0.9, 0.99], "weight_decay": 0.1}));
    assert_eq!(cfg["groups"], serde_json::json!([[".bias", {"weight_decay": 0.0}], ["ln_", {"weight_decay": 0.0}]]));
    assert_eq!(
        (cfg["lr"].as_f64(), cfg["clip_norm"].as_f64(), cfg["min_lr"].as_f64()),
        (Some(1e-3), Some(1.0), Some(1e-4))
    );
    assert_eq!((cfg["schedule"].as_str(), cfg["warmup_steps"].as_u64()), (Some("warmup_cosine"), Some(100)));
    // nanoGPT's warm-up: lr·(t + 1)/101 at step t.
    let lr1: f64 = common::csv_rows(&dir.join("steps.csv"))[0][3].parse().unwrap();
    assert!((lr1 - 1e-3 / 101.0).abs() < 1e-12, "{lr1}");
    // plot draws the validation loss by step.
    let plot = common::out("gpt-plot");
    run_ok(&["plot", &d, "--out", &plot.to_string_lossy()]);
    assert!(plot.join("val_loss.png").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&plot).unwrap();
}

/// `evaluate` of a gpt run repeats the validation estimate the run recorded at its checkpoint's
/// step (the training split's batches drawn first, as training drew them).
#[test]
fn evaluate_repeats_the_recorded_validation_estimate() {
    let run = base_run();
    let rows = read(run, "metrics.jsonl");
    let last: serde_json::Value = serde_json::from_str(rows.lines().last().unwrap()).unwrap();
    let said = run_ok(&["evaluate", &run.to_string_lossy()]);
    let want = format!("validation loss: {:.4} nats/char after 8 steps", last["test_loss"].as_f64().unwrap());
    assert!(said.contains(&want), "{said} (want {want})");
}

#[test]
fn a_resumed_gpt_run_is_bit_exact() {
    let full = base_run();
    let dir = common::out("gpt-resume");
    let d = dir.to_string_lossy().to_string();
    let flags = ["--eval-interval", "4", "--dropout", "0.1", "--warmup-steps", "2", "--decay-steps", "8"];
    run_ok_s(&tiny(&[&flags[..], &["--steps", "4", "--out", &d]].concat()));
    let text = run_ok(&["train", "--resume", &d, "--steps", "8"]);
    assert!(text.contains("resuming") && text.contains("after step 4"), "{text}");
    // The same steps (loss, learning rate, gradient norm) and estimates as the run never stopped.
    assert_eq!(columns(full, "steps.csv", 5), columns(&dir, "steps.csv", 5));
    assert_eq!(columns(full, "metrics.csv", 4), columns(&dir, "metrics.csv", 4));
    assert_eq!(read(full, "metrics.jsonl").lines().count(), 3);
    // The same weights: the same sample.
    let sample = |d: &Path| run_ok(&["sample", &d.to_string_lossy(), "--tokens", "40", "--threads", "1"]);
    assert_eq!(sample(full), sample(&dir));
    let text = run_ok(&["train", "--resume", &d, "--steps", "8"]);
    assert!(text.contains("nothing to do"), "{text}");
    assert!(run_err(&["train", "--resume", &d, "--epochs", "3"]).contains("--steps"));
    std::fs::remove_dir_all(&dir).unwrap();
    // Stopped between two estimates (it also estimates where it stopped): its steps are numbered
    // in the same evaluation intervals as the run that never stopped.
    let off = common::out("gpt-resume-off");
    let o = off.to_string_lossy().to_string();
    run_ok_s(&tiny(&[&flags[..], &["--steps", "3", "--out", &o]].concat()));
    run_ok(&["train", "--resume", &o, "--steps", "8"]);
    assert_eq!(columns(full, "steps.csv", 5), columns(&off, "steps.csv", 5));
    // Its estimates too: the one where it stopped gave way to the interval's, numbered alike.
    assert_eq!(columns(full, "metrics.csv", 2), columns(&off, "metrics.csv", 2));
    std::fs::remove_dir_all(&off).unwrap();
}

#[test]
fn sampling_is_seeded_and_continues_the_prompt() {
    let d = base_run().to_string_lossy().to_string();
    let sample = |extra: &[&str]| {
        let args =
            [&["sample", d.as_str(), "--prompt", "ROMEO:", "--tokens", "30", "--threads", "1"][..], extra].concat();
        let o = descent().args(&args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let a = sample(&["--seed", "0"]);
    assert!(a.starts_with("ROMEO:"), "{a:?}");
    assert_eq!(a.strip_suffix('\n').unwrap().chars().count(), "ROMEO:".len() + 30, "{a:?}");
    assert_eq!(a, sample(&["--seed", "0"]));
    assert_ne!(a, sample(&["--seed", "1"]));
    // Top-1 is the most likely character each time, whatever the seed; a shorter context too.
    assert_eq!(sample(&["--top-k", "1", "--seed", "3"]), sample(&["--top-k", "1", "--seed", "4"]));
    let short = sample(&["--block-size", "4", "--temperature", "1.5"]);
    assert!(short.starts_with("ROMEO:"), "{short:?}");
}

#[test]
fn bad_gpt_input_is_a_one_line_error() {
    let dir = common::out("gpt-bad");
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_string_lossy().to_string()
    };
    let latin1 = file("latin1.txt", b"To be, or not to be: caf\xe9");
    // 200 characters: 180 train, 20 validate; 43: 38 train.
    let short = file("short.txt", &"To be, or not to be: that is the question. ".repeat(5).as_bytes()[..200]);
    let tiny_text = file("tiny.txt", b"To be, or not to be: that is the question.\n");
    let empty = file("empty.txt", b"");
    let out = dir.join("run").to_string_lossy().to_string();
    let train = |extra: &[&str]| -> Vec<String> {
        ["train", "--model", "gpt", "--out", &out].iter().chain(extra).map(|s| s.to_string()).collect()
    };
    one_line_error(&train(&["--text", &latin1]), &["latin1.txt", "not UTF-8", "0xe9"]);
    one_line_error(&train(&["--text", &empty]), &["empty.txt", "empty"]);
    one_line_error(&train(&["--text", &short]), &["short.txt", "validation", "20 characters", "block size 64"]);
    one_line_error(
        &train(&["--text", &tiny_text, "--block-size", "40"]),
        &["tiny.txt", "training", "38", "block size 40"],
    );
    one_line_error(&train(&["--n-embd", "30", "--n-head", "4"]), &["--n-embd 30", "not divisible", "--n-head 4"]);
    // A device is read as no text at all (it was read until memory ran out).
    one_line_error(&train(&["--text", "/dev/zero"]), &["/dev/zero", "not a regular file"]);
    one_line_error(&train(&["--epochs", "2"]), &["--epochs", "--steps"]);
    one_line_error(&["train", "--model", "mlp", "--n-layer", "2", "--out", &out], &["--n-layer", "gpt"]);
    assert!(!Path::new(&out).exists(), "a refused run left its folder behind");

    let run = base_run().to_string_lossy().to_string();
    let sample =
        |extra: &[&str]| -> Vec<String> { ["sample", &run].iter().chain(extra).map(|s| s.to_string()).collect() };
    one_line_error(&sample(&["--prompt", "ROMÉO:"]), &["'É'", "U+00C9", "vocabulary"]);
    one_line_error(&sample(&["--block-size", "17"]), &["--block-size 17", "position table", "16"]);
    one_line_error(&sample(&["--temperature", "0"]), &["--temperature"]);
    // A temperature so small that the logits divided by it overflow is the greedy choice, as a
    // small one is (it printed newlines: ∞ − ∞ made every probability NaN).
    let greedy = |t: &str| run_ok_s(&sample(&["--prompt", "ROMEO", "--tokens", "12", "--temperature", t]));
    assert_eq!(greedy("1e-310"), greedy("1e-3"));
    assert!(greedy("1e-310").trim_end().len() > "ROMEO".len() + 1, "{}", greedy("1e-310"));
    one_line_error(&sample(&["--top-k", "0"]), &["--top-k"]);
    // Bytes that are not UTF-8: the error names the flag (clap's own names no argument).
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let o =
            descent().args(["sample", &run, "--prompt"]).arg(std::ffi::OsStr::from_bytes(b"\xff")).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains("--prompt") && e.contains("not UTF-8"), "{e}");
    }
    one_line_error(&["sample", &dir.to_string_lossy()], &["no checkpoint.safetensors"]);
    // A run of another model has no language model to sample from.
    let linear = dir.join("linear").to_string_lossy().to_string();
    run_ok(&["train", "--model", "linear", "--epochs", "1", "--threads", "1", "--out", &linear]);
    one_line_error(&["sample", &linear], &["no language model", "--model gpt"]);
    // A copy of the run whose config.json was edited after its checkpoint: refused, as evaluate
    // and resume refuse it.
    let edited = dir.join("edited");
    std::fs::create_dir_all(&edited).unwrap();
    for f in std::fs::read_dir(base_run()).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, edited.join(f.file_name().unwrap())).unwrap();
        }
    }
    let e = edited.to_string_lossy().to_string();
    run_ok(&["sample", &e, "--tokens", "5"]);
    let config = std::fs::read_to_string(edited.join("config.json")).unwrap();
    assert!(config.contains("\"seed\": 0"), "{config}");
    std::fs::write(edited.join("config.json"), config.replace("\"seed\": 0", "\"seed\": 7")).unwrap();
    one_line_error(&["sample", &e, "--tokens", "5"], &["config.json was changed"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A run resumes (and is evaluated) only on the text it was trained on, wherever it lies now: an
/// edit that keeps the characters (the text reversed) is refused, naming the file.
#[test]
fn a_run_refuses_an_edited_text() {
    let dir = common::out("gpt-edited-text");
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("t.txt");
    let original: String = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tinyshakespeare/input.txt"),
    )
    .unwrap()
    .chars()
    .take(5000)
    .collect();
    std::fs::write(&text, &original).unwrap();
    let (t, run) = (text.to_string_lossy().to_string(), dir.join("run").to_string_lossy().to_string());
    run_ok_s(&tiny(&["--text", &t, "--steps", "2", "--eval-interval", "2", "--out", &run]));
    run_ok(&["train", "--resume", &run, "--steps", "3"]);
    // A gpt has steps, not epochs: its evaluation says where it is in steps.
    let ev = run_ok(&["evaluate", &run]);
    assert!(ev.contains("(gpt, step 3)"), "{ev}");
    // The same text moved: the run resumes with --text at its new path (and keeps it), the
    // checkpoint's digest checked against what is read there.
    let moved = dir.join("moved.txt");
    std::fs::rename(&text, &moved).unwrap();
    let m = moved.to_string_lossy().to_string();
    run_ok(&["train", "--resume", &run, "--steps", "4", "--text", &m]);
    run_ok(&["train", "--resume", &run, "--steps", "5"]);
    std::fs::write(&moved, original.chars().rev().collect::<String>()).unwrap();
    for args in [vec!["train", "--resume", &run, "--steps", "6"], vec!["evaluate", &run]] {
        one_line_error(
            &args,
            &["moved.txt", "not the text the run's checkpoint was trained on", "give the text the run was"],
        );
    }
    // Back at its first path, the original text resumes the run again.
    std::fs::write(&text, &original).unwrap();
    run_ok(&["train", "--resume", &run, "--steps", "6", "--text", &t]);
    std::fs::remove_dir_all(&dir).unwrap();
}
