//! The function's attributes carry over: docs and `#[deprecated]` to the
//! struct, `#[cfg]` to everything, lint levels to the struct and `call`,
//! the rest (`#[inline]`, `#[must_use]`) to `call`. A raw identifier names
//! the operator without its `r#`, and `const fn` is allowed.
#![deny(missing_docs)]
#![deny(unused_must_use)]

use exactly::{Emitter, Operator};

/// Doubles a number.
#[exactly::operator]
#[inline]
#[must_use]
#[allow(clippy::needless_pass_by_value)]
pub fn double(n: u64) -> u64 {
    n * 2
}

/// Never compiled: `cfg` removes the struct and its impls.
#[cfg(any())]
#[exactly::operator]
pub fn missing(n: u64) -> u64 {
    n
}

/// A keyword as the name.
#[exactly::operator]
#[must_use]
pub const fn r#type(n: u8) -> u8 {
    n
}

/// A private operator module-level item.
mod private {
    use exactly::operator;

    #[operator]
    pub(crate) fn negate(n: i64) -> i64 {
        -n
    }
}

const SEVEN: u8 = r#type::call(7);

fn main() {
    let _ = double::call(2);
    let mut out = Emitter::new();
    double.process(21, &mut (), &mut out).unwrap();
    assert_eq!(out.take(), vec![42]);

    assert_eq!(<r#type as Operator>::NAME, "type");
    assert_eq!(SEVEN, 7);

    assert_eq!(private::negate::call(3), -3);
}
