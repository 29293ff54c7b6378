//! A test's folder under the temp dir, removed when the test is done with it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// An empty folder `descent-KIND-TAG-PID` under the temp dir, removed when the value is dropped,
/// unless the test is failing (its files are then left to look at).
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(kind: &str, tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("descent-{kind}-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
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

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
