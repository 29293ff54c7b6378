//! What the command-line tests share: the binary run from the repository root, fresh output
//! folders, and running it expecting success or failure.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `descent train` of a tiny gpt (one layer, 2 heads, 16 wide, windows of 16 characters, a batch
/// of 4, short estimates, one thread) with the recipe's optimizer, clipping and schedule.
pub const TINY_GPT: &[&str] = &[
    "train",
    "--model",
    "gpt",
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "16",
    "--block-size",
    "16",
    "--batch-size",
    "4",
    "--eval-iters",
    "2",
    "--threads",
    "1",
];

/// `descent`, run from the repository root (where `data/mnist` is).
pub fn descent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_descent"));
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    c
}

/// A path under the temp dir for a test's files, removed when the test is done with it: when
/// the value is dropped, unless the test is failing (its files are then left to look at).
pub struct Scratch(PathBuf);

impl Scratch {
    /// `descent-cli-TAG-PID` under the temp dir, absent to begin with.
    pub fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("descent-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_file(&d);
        Scratch(d)
    }

    /// The path, left in place: for a folder several tests share through a `static`.
    pub fn keep(self) -> PathBuf {
        let p = self.0.clone();
        std::mem::forget(self);
        p
    }

    /// The path as `&str` (the tests pass it as an argument).
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8 here")
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A fresh (removed) folder under the temp dir, unique to this test binary, removed again when
/// the test is done with it.
pub fn out(tag: &str) -> Scratch {
    Scratch::new(tag)
}

/// Runs `descent ARGS` and returns stdout and stderr together, failing the test if it failed.
pub fn run_ok(args: &[&str]) -> String {
    let o = descent().args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{args:?}: {text}");
    text
}

/// Runs `descent ARGS` and returns stderr, failing the test if it succeeded.
pub fn run_err(args: &[&str]) -> String {
    let o = descent().args(args).output().unwrap();
    assert!(!o.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Runs `descent ARGS` and fails the test unless it fails with one line on stderr, starting
/// `error:`, holding every needle: no panic and no backtrace (`RUST_BACKTRACE=1` would show one).
pub fn one_line_error<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S], needles: &[&str]) {
    let o = descent().args(args).env("RUST_BACKTRACE", "1").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{args:?} should fail");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("error: ") && !err.contains("panicked"), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{n}` not in {err}");
    }
}

/// A path as the `&str` an argument list takes.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The rows of a CSV file after its header, split as RFC 4180 quotes them.
pub fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let split = |line: &str| {
        let (mut cells, mut cur, mut quoted, mut chars) = (vec![], String::new(), false, line.chars().peekable());
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    cur.push('"');
                    chars.next();
                }
                ('"', _) => quoted = !quoted,
                (',', false) => cells.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        cells.push(cur);
        cells
    };
    std::fs::read_to_string(path).unwrap().lines().skip(1).map(split).collect()
}

/// A run folder's step losses (steps.csv) and its last test loss (metrics.csv).
pub fn curve(dir: &Path) -> (Vec<f64>, f64) {
    let steps = csv_rows(&dir.join("steps.csv")).iter().map(|r| r[2].parse().unwrap()).collect();
    let epochs = csv_rows(&dir.join("metrics.csv"));
    (steps, epochs.last().unwrap()[3].parse().unwrap())
}

/// The largest difference between two curves of the same length.
pub fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}
