//! `mpirun -n 2 descent train …`: data-parallel training over MPI (feature `mpi`; run with
//! `cargo test -p descent --features mpi --test mpi`, with Open MPI or MPICH installed).

#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::descent;

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

/// The losses of steps.csv and the last test loss of metrics.csv.
fn curve(dir: &Path) -> (Vec<f64>, f64) {
    let steps = common::csv_rows(&dir.join("steps.csv")).iter().map(|r| r[2].parse().unwrap()).collect();
    let epochs = common::csv_rows(&dir.join("metrics.csv"));
    (steps, epochs.last().unwrap()[3].parse().unwrap())
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn out(tag: &str) -> PathBuf {
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
