//! `mpirun -n 2 descent train …`: data-parallel training over MPI (feature `mpi`; run with
//! `cargo test -p descent --features mpi --test mpi`, with Open MPI or MPICH installed).

#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{curve, descent, max_diff, TINY_GPT};

/// One mpirun at a time: two runs of two ranks each on a small machine would only wait for
/// each other.
static MPIRUN: Mutex<()> = Mutex::new(());

/// `mpirun -n N descent ARGS` from the repository root, on this machine's shared memory.
fn mpirun(n: usize) -> Command {
    let version = Command::new("mpirun").arg("--version").output().expect("mpirun is on the PATH");
    let mut c = Command::new("mpirun");
    if String::from_utf8_lossy(&version.stdout).contains("Open MPI") {
        // Root in containers, more ranks than cores, no pinning, shared-memory transport.
        c.args(["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader"]);
        c.env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    }
    c.args(["-n", &n.to_string(), env!("CARGO_BIN_EXE_descent")]);
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    c
}

/// Runs a command to its end within `limit`, returning success, stdout and stderr together, and
/// the seconds it took; a command still running at the limit fails the test (a hang).
fn run(mut c: Command, limit: Duration) -> (bool, String, f64) {
    let t0 = Instant::now();
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o.status.success(), text, t0.elapsed().as_secs_f64())
}

fn out(tag: &str) -> common::Scratch {
    common::out(&format!("mpi-{tag}"))
}

/// Two ranks on one global batch of 128 against one process on the same batch: the same loss
/// curve to float rounding (the gradient is summed in another order), and rank 0 alone writes.
#[test]
fn two_ranks_train_as_one_process_with_the_same_global_batch() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    for (model, extra) in [("mlp", &["--dropout", "0"][..]), ("lenet", &[][..])] {
        let (d1, d2) = (out(&format!("{model}-1")), out(&format!("{model}-2")));
        let args = |d: &Path| -> Vec<String> {
            let mut a: Vec<String> =
                ["train", "--model", model, "--steps", "40", "--batch-size", "128", "--threads", "1"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
            a.extend(extra.iter().map(|s| s.to_string()));
            a.extend(["--out".to_string(), d.display().to_string()]);
            a
        };
        let mut single = descent();
        single.args(args(&d1));
        let (ok, text, _) = run(single, Duration::from_secs(120));
        assert!(ok, "{text}");
        let mut two = mpirun(2);
        two.args(args(&d2));
        let (ok, text, secs) = run(two, Duration::from_secs(120));
        assert!(ok, "{text}");
        assert!(text.contains("data-parallel on 2 ranks"), "{text}");
        // Rank 0 reports once.
        assert_eq!(text.matches("run folder:").count(), 1, "{text}");
        let ((l1, t1), (l2, t2)) = (curve(&d1), curve(&d2));
        let (dl, dt) = (max_diff(&l1, &l2), (t1 - t2).abs());
        println!("{model}: 2 ranks against 1 process over 40 steps of 128: step loss differs by {dl:.2e} at most, test loss by {dt:.2e} ({secs:.1}s)");
        assert!(dl < 1e-4 && dt < 1e-4, "{model}: {l1:?} vs {l2:?}; test {t1} vs {t2}");
        for d in [d1, d2] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A checkpoint resumes on another number of ranks: one process then two give the curve of one
/// process all along, to float rounding.
#[test]
fn a_checkpoint_resumes_on_another_number_of_ranks() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let (whole, cut) = (out("whole"), out("cut"));
    let base =
        ["train", "--model", "mlp", "--dropout", "0", "--batch-size", "64", "--accumulate", "2", "--threads", "1"];
    let (ok, text, _) = run(
        {
            let mut c = descent();
            c.args(base).args(["--steps", "30", "--out", whole.to_str().unwrap()]);
            c
        },
        Duration::from_secs(120),
    );
    assert!(ok, "{text}");
    let (ok, text, _) = run(
        {
            let mut c = descent();
            c.args(base).args(["--steps", "15", "--out", cut.to_str().unwrap()]);
            c
        },
        Duration::from_secs(120),
    );
    assert!(ok, "{text}");
    let (ok, text, _) = run(
        {
            let mut c = mpirun(2);
            c.args(["train", "--resume", cut.to_str().unwrap(), "--steps", "30", "--threads", "1"]);
            c
        },
        Duration::from_secs(120),
    );
    assert!(ok && text.contains("resuming") && text.contains("2 ranks"), "{text}");
    let ((l1, t1), (l2, t2)) = (curve(&whole), curve(&cut));
    let dl = max_diff(&l1, &l2);
    println!("resumed on 2 ranks after 15 steps on 1: step loss differs by {dl:.2e} at most over 30 steps");
    assert!(dl < 1e-4 && (t1 - t2).abs() < 1e-4, "{l1:?} vs {l2:?}");
    for d in [whole, cut] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A rank that fails stops every rank within seconds, the error naming the rank and the cause:
/// rank 0 finding the run folder taken, and rank 1 missing the data (started in another folder).
#[test]
fn a_failing_rank_stops_every_rank_naming_itself() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let taken = out("taken");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("notes.txt"), "not a run").unwrap();
    let mut c = mpirun(2);
    c.args(["train", "--model", "mlp", "--steps", "5", "--out", taken.to_str().unwrap()]);
    let (ok, text, secs) = run(c, Duration::from_secs(60));
    assert!(!ok, "{text}");
    assert!(text.contains("rank 0 of 2") && text.contains(taken.to_str().unwrap()), "{text}");
    println!("rank 0 failed: every rank stopped after {secs:.1}s");
    let _ = std::fs::remove_dir_all(&taken);

    // MPMD: rank 1 starts where there is no data/mnist.
    let elsewhere = out("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let dir = out("nodata");
    let version = Command::new("mpirun").arg("--version").output().unwrap();
    if !String::from_utf8_lossy(&version.stdout).contains("Open MPI") {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_descent");
    let args = ["train", "--model", "mlp", "--steps", "5", "--threads", "1", "--out", dir.to_str().unwrap()];
    let mut c = mpirun(1);
    c.args(args).arg(":").args(["-n", "1", "--wdir", elsewhere.to_str().unwrap(), bin]).args(args);
    let (ok, text, secs) = run(c, Duration::from_secs(60));
    assert!(!ok, "{text}");
    assert!(text.contains("rank 1 of 2") && text.contains("MNIST"), "{text}");
    println!("rank 1 failed: every rank stopped after {secs:.1}s");
    for d in [elsewhere, dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `descent train ARGS --out DIR` on one process (`ranks` 1) or under `mpirun -n ranks`; its
/// output, which must report success.
fn train_on(ranks: usize, args: &[&str], dir: Option<&Path>) -> String {
    let mut c = if ranks == 1 { descent() } else { mpirun(ranks) };
    c.args(args);
    if let Some(d) = dir {
        c.args(["--out", d.to_str().unwrap()]);
    }
    let (ok, text, _) = run(c, Duration::from_secs(300));
    assert!(ok, "{args:?}: {text}");
    text
}

/// The bytes of optimizer state rank 0 reported.
fn state_bytes(text: &str) -> usize {
    let line = text.lines().find(|l| l.starts_with("optimizer state: ")).unwrap_or_else(|| panic!("{text}"));
    line["optimizer state: ".len()..].split(' ').next().unwrap().parse().unwrap()
}

/// --shard-optimizer (ZeRO stage 1) trains as the unsharded run on two ranks and as one
/// process, clipping by the norm of the whole gradient, with half the optimizer state on each
/// rank; its checkpoint holds the same state as the unsharded run's.
#[test]
fn a_sharded_optimizer_trains_as_the_unsharded_one_with_half_the_state() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let base = [
        "train",
        "--model",
        "mlp",
        "--dropout",
        "0",
        "--steps",
        "200",
        "--batch-size",
        "32",
        "--threads",
        "1",
        "--optimizer",
        "adamw",
        "--clip-norm",
        "0.5",
        "--hparams",
        r#"{"weight_decay": 0.1}"#,
    ];
    let (d1, d2, dz) = (out("z-one"), out("z-plain"), out("z-shard"));
    train_on(1, &base, Some(&d1));
    let plain = train_on(2, &base, Some(&d2));
    let sharded = train_on(2, &[&base[..], &["--shard-optimizer"]].concat(), Some(&dz));
    assert!(sharded.contains("optimizer sharded"), "{sharded}");
    let ((l1, t1), (l2, t2), (lz, tz)) = (curve(&d1), curve(&d2), curve(&dz));
    let (dp, d1z) = (max_diff(&l2, &lz), max_diff(&l1, &lz));
    let (sp, sz) = (state_bytes(&plain), state_bytes(&sharded));
    println!(
        "sharded against unsharded on 2 ranks over 200 steps of 32 (clip-norm 0.5): step loss differs by {dp:.2e} at \
         most, test loss by {:.2e}; against 1 process by {d1z:.2e} and {:.2e}; optimizer state on rank 0: {sz} bytes \
         sharded, {sp} unsharded",
        (t2 - tz).abs(),
        (t1 - tz).abs()
    );
    assert!(dp < 1e-5 && (t2 - tz).abs() < 1e-5, "{l2:?} vs {lz:?}");
    assert!(d1z < 1e-4 && (t1 - tz).abs() < 1e-4, "{l1:?} vs {lz:?}");
    // Half, up to the cut on a block boundary (2048 values) of each of Adam's two buffers.
    assert!(sz <= sp / 2 + 2 * 2048 * 4 && sz >= sp / 2 - 2 * 2048 * 4, "{sz} vs {sp}");
    // The same state in the same form as the unsharded run's checkpoint.
    let load = |d: &Path| descent_train::checkpoint::Checkpoint::load(&d.join("checkpoint.safetensors")).unwrap();
    let (cp, cz) = (load(&d2), load(&dz));
    assert_eq!(cp.optimizer.buffers.keys().collect::<Vec<_>>(), cz.optimizer.buffers.keys().collect::<Vec<_>>());
    assert_eq!(cp.optimizer.counters, cz.optimizer.counters);
    for (k, b) in &cp.optimizer.buffers {
        let diff = b.iter().zip(&cz.optimizer.buffers[k]).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-6, "{k}: {diff}");
    }
    for d in [d1, d2, dz] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A sharded run's checkpoint resumes on one process and on two ranks, sharded or not, and an
/// unsharded one resumes sharded: the curve of one process all along, to float rounding.
#[test]
fn a_sharded_checkpoint_resumes_on_one_process_and_on_two_ranks() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let base =
        ["train", "--model", "mlp", "--dropout", "0", "--batch-size", "64", "--threads", "1", "--clip-norm", "1"];
    let whole = out("z-whole");
    train_on(1, &[&base[..], &["--steps", "30"]].concat(), Some(&whole));
    let (l1, t1) = curve(&whole);
    // (ranks and sharding before the cut, after it)
    for (before, after) in
        [((2, true), (1, false)), ((2, true), (2, true)), ((1, false), (2, true)), ((2, true), (2, false))]
    {
        let cut = out(&format!("z-cut-{}{}-{}{}", before.0, before.1, after.0, after.1));
        let shard = |on: bool| if on { &["--shard-optimizer"][..] } else { &[][..] };
        train_on(before.0, &[&base[..], &["--steps", "15"], shard(before.1)].concat(), Some(&cut));
        let text = train_on(
            after.0,
            &[&["train", "--resume", cut.to_str().unwrap(), "--steps", "30", "--threads", "1"][..], shard(after.1)]
                .concat(),
            None,
        );
        assert!(text.contains("resuming"), "{text}");
        let (l2, t2) = curve(&cut);
        let dl = max_diff(&l1, &l2);
        println!(
            "15 steps on {} rank(s){}, then 15 on {}{}: step loss differs from one process by {dl:.2e} at most",
            before.0,
            if before.1 { " sharded" } else { "" },
            after.0,
            if after.1 { " sharded" } else { "" }
        );
        assert!(dl < 1e-4 && (t1 - t2).abs() < 1e-4, "{before:?} then {after:?}: {l1:?} vs {l2:?}");
        let _ = std::fs::remove_dir_all(cut);
    }
    let _ = std::fs::remove_dir_all(whole);
}

/// An optimizer whose step reads whole tensors is refused under --shard-optimizer with one line
/// naming it and the flag, before the run folder is made; so is one process.
#[test]
fn shard_optimizer_refuses_whole_tensor_optimizers_and_one_process() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    for opt in ["lamb", "optax.lars", "optax.adafactor"] {
        let dir = out(&format!("z-refused-{opt}"));
        let mut c = mpirun(2);
        c.args(["train", "--model", "mlp", "--steps", "2", "--threads", "1", "--optimizer", opt, "--shard-optimizer"]);
        c.args(["--out", dir.to_str().unwrap()]);
        let (ok, text, _) = run(c, Duration::from_secs(60));
        assert!(!ok, "{text}");
        let line = text.lines().find(|l| l.contains("--shard-optimizer:")).unwrap_or_else(|| panic!("{text}"));
        let name = opt.rsplit('.').next().unwrap();
        assert!(line.contains(&format!(".{name}`")), "{line}");
        assert!(line.contains("not elementwise"), "{line}");
        assert!(!dir.exists(), "{opt}: the run folder was made");
    }
    let dir = out("z-one-rank");
    let mut c = descent();
    c.args(["train", "--model", "mlp", "--steps", "2", "--shard-optimizer", "--out", dir.to_str().unwrap()]);
    let (ok, text, _) = run(c, Duration::from_secs(60));
    assert!(!ok && text.contains("--shard-optimizer") && text.contains("one process"), "{text}");
    assert!(!dir.exists());
}

/// The gpt on two ranks (each 2 of the 4 windows of a step), sharded or not, trains as one
/// process: the same step losses and validation loss to float rounding.
#[test]
fn a_gpt_on_two_ranks_trains_as_one_process() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let base = [TINY_GPT, &["--steps", "20", "--eval-interval", "10"]].concat();
    let (d1, d2, dz) = (out("gpt-one"), out("gpt-two"), out("gpt-shard"));
    train_on(1, &base, Some(&d1));
    let two = train_on(2, &base, Some(&d2));
    assert!(two.contains("data-parallel on 2 ranks"), "{two}");
    let sharded = train_on(2, &[&base[..], &["--shard-optimizer"]].concat(), Some(&dz));
    assert!(sharded.contains("optimizer sharded"), "{sharded}");
    let ((l1, t1), (l2, t2), (lz, tz)) = (curve(&d1), curve(&d2), curve(&dz));
    assert_eq!(l1.len(), 20);
    let (d12, d1z) = (max_diff(&l1, &l2), max_diff(&l1, &lz));
    println!(
        "gpt on 2 ranks against 1 process over 20 steps of 4 windows: step loss differs by {d12:.2e} at most, \
         validation loss by {:.2e}; sharded: {d1z:.2e} and {:.2e}",
        (t1 - t2).abs(),
        (t1 - tz).abs()
    );
    assert!(d12 < 1e-4 && (t1 - t2).abs() < 1e-4, "{l1:?} vs {l2:?}; {t1} vs {t2}");
    assert!(d1z < 1e-4 && (t1 - tz).abs() < 1e-4, "{l1:?} vs {lz:?}; {t1} vs {tz}");
    for d in [d1, d2, dz] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `bench train` under mpirun: the gpt and LeNet-5 split each batch across the ranks and report
/// the communication per step, sharded or not; --shard-optimizer is refused as `train` refuses
/// it (one process, an optimizer that is not elementwise).
#[test]
fn bench_train_runs_gpt_and_the_sharded_step_on_two_ranks() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let bench = |ranks: usize, extra: &[&str]| {
        let mut c = if ranks == 1 { descent() } else { mpirun(ranks) };
        c.args(["bench", "train", "--batches", "2", "--warmup", "1", "--threads", "1"]).args(extra);
        run(c, Duration::from_secs(120))
    };
    for model in ["gpt", "lenet"] {
        for shard in [false, true] {
            let extra = [&["--model", model][..], if shard { &["--shard-optimizer"][..] } else { &[][..] }].concat();
            let (ok, text, _) = bench(2, &extra);
            assert!(ok, "{model}: {text}");
            let label = if shard { "2 ranks (optimizer sharded) × 1 thread(s)" } else { "2 ranks × 1 thread(s)" };
            assert!(text.contains(label), "{model}: {text}");
            // Rank 0 alone reports.
            assert_eq!(text.matches("ms per step)").count(), 1, "{model}: {text}");
            assert!(text.contains(&format!("\"shard_optimizer\":{shard}")), "{text}");
        }
    }
    let (ok, text, _) = bench(1, &["--model", "gpt", "--shard-optimizer"]);
    assert!(!ok && text.contains("--shard-optimizer") && text.contains("one process"), "{text}");
    let (ok, text, _) = bench(2, &["--model", "mlp", "--optimizer", "lamb", "--shard-optimizer"]);
    assert!(!ok, "{text}");
    let line = text.lines().find(|l| l.contains("--shard-optimizer:")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(".lamb`") && line.contains("not elementwise"), "{line}");
}

/// `--data-parallel 2` (replicas in threads) and `mpirun -n 2` are the same computation: the same
/// batch split, the same dropout generators, sums of two values in either order: the same step
/// losses to the last digit.
#[test]
fn two_replicas_in_threads_train_as_two_mpi_ranks() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let (dr, dt) = (out("vs-ranks"), out("vs-threads"));
    let base = ["train", "--model", "mlp", "--steps", "30", "--batch-size", "64"];
    train_on(2, &[&base[..], &["--threads", "1"]].concat(), Some(&dr));
    train_on(1, &[&base[..], &["--threads", "2", "--data-parallel", "2"]].concat(), Some(&dt));
    let (lr, tr) = curve(&dr);
    let (lt, tt) = curve(&dt);
    println!("2 MPI ranks against 2 replicas in threads over 30 steps (dropout 0.2): {lr:?} / {lt:?}");
    assert_eq!(lr, lt);
    assert_eq!(tr, tt);
    for d in [dr, dt] {
        let _ = std::fs::remove_dir_all(d);
    }
}
