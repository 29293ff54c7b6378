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

#[cfg(test)]
mod tests {
    use super::Num;

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
