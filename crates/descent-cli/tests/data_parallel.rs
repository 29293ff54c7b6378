//! `descent train --data-parallel N`: replicas of the model in threads of one process, each
//! step's batch split across them as `mpirun -n N` splits it.

mod common;

use std::time::Instant;

use common::{curve, max_diff, one_line_error, out, run_err, run_ok, s, TINY_GPT};

/// TINY_GPT without its `--threads 1`, then `extra`.
fn tiny_gpt(extra: &[&str]) -> Vec<String> {
    let at = TINY_GPT.iter().position(|a| *a == "--threads").unwrap();
    let mut v: Vec<String> =
        TINY_GPT.iter().enumerate().filter(|(i, _)| *i != at && *i != at + 1).map(|(_, a)| a.to_string()).collect();
    v.extend(extra.iter().map(|a| a.to_string()));
    v
}

/// `descent train --resume DIR --steps STEPS` on two replicas of one thread each.
fn resume_on_two_replicas(dir: &std::path::Path, steps: u64) -> String {
    run_ok(&["train", "--resume", s(dir), "--steps", &steps.to_string(), "--threads", "2", "--data-parallel", "2"])
}

fn run(args: &[String]) -> String {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(&refs)
}

/// The gpt on two replicas (each 2 of the 4 windows of a step), sharded or not, trains as one
/// process: the same step losses and validation loss to float rounding; replica 0 alone reports.
#[test]
fn a_gpt_on_two_replicas_trains_as_one_process() {
    let (d1, d2, dz) = (out("dp-gpt-one"), out("dp-gpt-two"), out("dp-gpt-shard"));
    let base = ["--steps", "20", "--eval-interval", "10"];
    run(&tiny_gpt(&[&base[..], &["--threads", "1", "--out", s(&d1)]].concat()));
    let two = run(&tiny_gpt(&[&base[..], &["--threads", "2", "--data-parallel", "2", "--out", s(&d2)]].concat()));
    assert!(two.contains("data-parallel on 2 replicas"), "{two}");
    assert_eq!(two.matches("run folder:").count(), 1, "{two}");
    let sharded = run(&tiny_gpt(
        &[&base[..], &["--threads", "2", "--data-parallel", "2", "--shard-optimizer", "--out", s(&dz)]].concat(),
    ));
    assert!(sharded.contains("optimizer sharded") && sharded.contains("replica 0's 1/2 share"), "{sharded}");
    let ((l1, t1), (l2, t2), (lz, tz)) = (curve(&d1), curve(&d2), curve(&dz));
    assert_eq!(l1.len(), 20);
    let (d12, d1z) = (max_diff(&l1, &l2), max_diff(&l1, &lz));
    println!(
        "gpt on 2 replicas against 1 process over 20 steps of 4 windows: step loss differs by {d12:.2e} at most, \
         validation loss by {:.2e}; sharded: {d1z:.2e} and {:.2e}",
        (t1 - t2).abs(),
        (t1 - tz).abs()
    );
    assert!(d12 < 1e-4 && (t1 - t2).abs() < 1e-4, "{l1:?} vs {l2:?}; {t1} vs {t2}");
    assert!(d1z < 1e-4 && (t1 - tz).abs() < 1e-4, "{l1:?} vs {lz:?}; {t1} vs {tz}");
    // The setting is the run's computation, not its identity: not in config.json's hash, and a
    // run resumes with another number of replicas (below).
    for d in [d1, d2, dz] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// LeNet-5 on two replicas of one thread each against one process on the same global batch of
/// 128: the same curve to float rounding; and a run cut after 15 steps on one process resumes on
/// two replicas along the same curve.
#[test]
fn lenet_on_two_replicas_trains_and_resumes_as_one_process() {
    let (d1, d2, cut) = (out("dp-lenet-one"), out("dp-lenet-two"), out("dp-lenet-cut"));
    let base = ["train", "--model", "lenet", "--batch-size", "128"];
    let with = |extra: &[&str]| -> Vec<String> { [&base[..], extra].concat().iter().map(|a| a.to_string()).collect() };
    run(&with(&["--steps", "30", "--threads", "1", "--out", s(&d1)]));
    let t0 = Instant::now();
    run(&with(&["--steps", "30", "--threads", "2", "--data-parallel", "2", "--out", s(&d2)]));
    let secs = t0.elapsed().as_secs_f64();
    run(&with(&["--steps", "15", "--threads", "1", "--out", s(&cut)]));
    let resumed = resume_on_two_replicas(&cut, 30);
    assert!(resumed.contains("resuming") && resumed.contains("2 replicas"), "{resumed}");
    // The change of replicas is said: the sums change, so the resume is close, not bit for bit.
    assert!(resumed.contains("last trained on 1 replica(s), this resume on 2 replica(s)"), "{resumed}");
    let ((l1, t1), (l2, t2), (lc, tc)) = (curve(&d1), curve(&d2), curve(&cut));
    let (d12, d1c) = (max_diff(&l1, &l2), max_diff(&l1, &lc));
    println!(
        "lenet on 2 replicas against 1 process over 30 steps of 128: step loss differs by {d12:.2e} at most ({secs:.1}s); \
         resumed on 2 replicas after 15 steps on 1: {d1c:.2e}"
    );
    assert!(d12 < 1e-4 && (t1 - t2).abs() < 1e-4, "{l1:?} vs {l2:?}");
    assert!(d1c < 1e-4 && (t1 - tc).abs() < 1e-4, "{l1:?} vs {lc:?}");
    for d in [d1, d2, cut] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// With dropout, replica 1 draws masks of its own (the run is not the one-process run), seeded
/// per step: a run cut after 15 steps on two replicas and resumed on two follows the
/// uninterrupted run to the last digit.
#[test]
fn dropout_on_replicas_resumes_bit_for_bit() {
    let (whole, cut) = (out("dp-dropout-whole"), out("dp-dropout-cut"));
    let base = ["train", "--model", "mlp", "--dropout", "0.5", "--threads", "2", "--data-parallel", "2"];
    let with = |extra: &[&str]| -> Vec<String> { [&base[..], extra].concat().iter().map(|a| a.to_string()).collect() };
    run(&with(&["--steps", "30", "--out", s(&whole)]));
    run(&with(&["--steps", "15", "--out", s(&cut)]));
    let resumed = resume_on_two_replicas(&cut, 30);
    assert!(resumed.contains("resuming") && !resumed.contains("warning"), "{resumed}");
    let ((a, _), (b, _)) = (curve(&whole), curve(&cut));
    assert_eq!(a.len(), 30);
    assert_eq!(a, b, "the resumed run's step losses differ from the uninterrupted run's");
    for d in [whole, cut] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Sharding is the computation, not the settings: a run cut after 15 steps on two replicas
/// resumes sharded on the uninterrupted unsharded run's path to the last digit (the same sums in
/// the same order, an elementwise step), and nothing is said.
#[test]
fn a_resume_that_only_shards_the_optimizer_is_bit_for_bit_and_silent() {
    let (whole, cut) = (out("dp-shard-whole"), out("dp-shard-cut"));
    let base = ["train", "--model", "mlp", "--threads", "2", "--data-parallel", "2"];
    let with = |extra: &[&str]| -> Vec<String> { [&base[..], extra].concat().iter().map(|a| a.to_string()).collect() };
    run(&with(&["--steps", "30", "--out", s(&whole)]));
    run(&with(&["--steps", "15", "--out", s(&cut)]));
    let resumed = run_ok(&[
        "train",
        "--resume",
        s(&cut),
        "--steps",
        "30",
        "--threads",
        "2",
        "--data-parallel",
        "2",
        "--shard-optimizer",
    ]);
    assert!(resumed.contains("resuming") && !resumed.contains("warning"), "{resumed}");
    let ((a, _), (b, _)) = (curve(&whole), curve(&cut));
    assert_eq!(a.len(), 30);
    assert_eq!(a, b, "the sharded resume's step losses differ from the uninterrupted run's");
    for d in [whole, cut] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A resume on other replicas that is then refused says its error alone: the warning that the
/// sums change belongs to a resume that runs.
#[test]
fn a_refused_resume_on_other_replicas_prints_no_warning() {
    let cut = out("dp-refused-resume");
    run_ok(&["train", "--model", "mlp", "--optimizer", "lamb", "--steps", "3", "--threads", "1", "--out", s(&cut)]);
    let args =
        ["train", "--resume", s(&cut), "--steps", "6", "--threads", "2", "--data-parallel", "2", "--shard-optimizer"];
    one_line_error(&args, &["--shard-optimizer", "not elementwise"]);
    let _ = std::fs::remove_dir_all(cut);
}

/// An error of replica 0 (the run folder taken) is the one error shown, once, as one process
/// shows it; the other replica, waiting for replica 0's settings, stops instead of hanging.
#[test]
fn an_error_on_one_replica_stops_the_others_and_is_shown_once() {
    let d = out("dp-taken");
    run(&tiny_gpt(&["--steps", "2", "--eval-interval", "2", "--threads", "1", "--out", s(&d)]));
    let args = tiny_gpt(&["--steps", "2", "--threads", "2", "--data-parallel", "2", "--out", s(&d)]);
    let t0 = Instant::now();
    one_line_error(&args, &["exists", s(&d)]);
    assert!(t0.elapsed().as_secs() < 60);
    let _ = std::fs::remove_dir_all(d);
}

/// What --data-parallel cannot honour is refused in one line naming the flag.
#[test]
fn data_parallel_refusals_name_the_flag() {
    let d = out("dp-refused");
    for (extra, needle) in [
        (&["--threads", "2", "--data-parallel", "3"][..], "--data-parallel 3"),
        (&["--threads", "3", "--data-parallel", "2"][..], "divide evenly"),
        (&["--threads", "2", "--data-parallel", "0"][..], "at least one replica"),
    ] {
        let args = tiny_gpt(&[extra, &["--steps", "2", "--out", s(&d)]].concat());
        one_line_error(&args, &[needle]);
        assert!(!d.exists(), "{extra:?} wrote {}", d.display());
    }
    // Commands that train each run in one process refuse it rather than ignore it.
    let err = run_err(&[
        "compare",
        "--model",
        "mlp",
        "--run",
        "adam",
        "--run",
        "sgd:lr=0.1",
        "--steps",
        "3",
        "--data-parallel",
        "2",
        "--out",
        s(&d),
    ]);
    assert!(err.contains("--data-parallel 2") && err.lines().count() <= 2, "{err}");
    assert!(!d.exists());
    // `bench train` names the count it cannot honour.
    for (extra, needle) in [
        (&["--batches", "0"][..], "--batches 0"),
        (&["--rounds", "0", "--precision", "f32,bf16"][..], "--rounds 0"),
        (&["--batch-size", "0"][..], "--batch-size 0"),
        (&["--batch-size", "1", "--threads", "2", "--data-parallel", "2"][..], "--batch-size 1"),
    ] {
        let args: Vec<String> =
            [&["bench", "train", "--model", "mlp"][..], extra].concat().iter().map(|a| a.to_string()).collect();
        one_line_error(&args, &[needle]);
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// `bench train --data-parallel 2`: each replica times its share of every batch on its own
/// thread; replica 0 alone reports, with the time of the gradients' sum.
#[test]
fn bench_train_times_replicas() {
    for model in ["gpt", "lenet"] {
        let text = run_ok(&[
            "bench",
            "train",
            "--model",
            model,
            "--batches",
            "2",
            "--warmup",
            "1",
            "--threads",
            "2",
            "--data-parallel",
            "2",
        ]);
        assert!(text.contains("2 replicas × 1 thread(s)"), "{model}: {text}");
        assert_eq!(text.matches("ms per step)").count(), 1, "{model}: {text}");
    }
    one_line_error(
        &["bench", "train", "--model", "gpt", "--threads", "1", "--data-parallel", "2"],
        &["--data-parallel 2"],
    );
}
