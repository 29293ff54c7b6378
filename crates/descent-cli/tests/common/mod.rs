//! What the command-line tests share: the binary run from the repository root, fresh output
//! folders, and running it expecting success or failure.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// `descent`, run from the repository root (where `data/mnist` is).
pub fn descent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_descent"));
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    c
}

/// A fresh (removed) folder under the temp dir, unique to this test binary.
pub fn out(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("descent-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
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
