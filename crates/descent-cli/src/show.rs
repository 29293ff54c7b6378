//! How numbers are written for the user in banners and messages.

use std::fmt;

/// A float as Python's `repr` writes it: plainly between 1e-4 and 1e16, with an exponent
/// outside (`1e300`, `2.5e-7`), where Rust's `{}` writes every digit (301 of them for 1e300).
#[derive(Debug, Clone, Copy)]
pub struct Num(pub f64);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let x = self.0;
        if x != 0.0 && x.is_finite() && !(1e-4..1e16).contains(&x.abs()) {
            write!(f, "{x:e}")
        } else {
            write!(f, "{x}")
        }
    }
}

/// A size in bytes for a table: `512 B`, `397.5 KiB`, `1.17 MiB`.
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub usize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            b if b >= 1 << 20 => write!(f, "{:.2} MiB", b as f64 / (1u64 << 20) as f64),
            b if b >= 1 << 10 => write!(f, "{:.1} KiB", b as f64 / 1024.0),
            b => write!(f, "{b} B"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Bytes, Num};

    #[test]
    fn sizes_are_written_in_binary_units() {
        for (b, s) in [(0, "0 B"), (512, "512 B"), (407_040, "397.5 KiB"), (1_226_833, "1.17 MiB")] {
            assert_eq!(Bytes(b).to_string(), s);
        }
    }

    #[test]
    fn numbers_are_written_as_python_writes_them() {
        for (x, s) in [
            (1e300, "1e300"),
            (-2.5e-7, "-2.5e-7"),
            (0.001, "0.001"),
            (1e-4, "0.0001"),
            (6e-5, "6e-5"),
            (123456.0, "123456"),
            (1e16, "1e16"),
            (0.0, "0"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "inf"),
        ] {
            assert_eq!(Num(x).to_string(), s, "{x}");
        }
    }
}
