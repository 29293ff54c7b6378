//! Checks of flag values that several commands share.

use anyhow::{bail, Result};

/// Counts that must be at least 1 (`--steps`, `--seeds`, …): the first flag given 0 is named alone,
/// `"--steps 0: give at least 1"`.
pub fn at_least_one(counts: &[(&str, u64)]) -> Result<()> {
    if let Some((flag, _)) = counts.iter().find(|(_, n)| *n == 0) {
        bail!("{flag} 0: give at least 1");
    }
    Ok(())
}
