//! A `Result` return type is fallible: `Err` is returned from `process` as
//! a `BoxError`, and `Ok` is handled as the shape without `Result`.

use exactly::{Emitter, Operator};

#[derive(Debug)]
struct Negative(i64);

impl std::fmt::Display for Negative {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is negative", self.0)
    }
}

impl std::error::Error for Negative {}

/// Map: `Result<B, E>`.
#[exactly::operator]
fn parse(line: String) -> Result<i64, std::num::ParseIntError> {
    line.parse()
}

/// Emit: `Result<(), E>`, with a `String` error.
#[exactly::operator]
fn digits(line: String, out: &mut Emitter<u32>) -> Result<(), String> {
    for c in line.chars() {
        out.emit(
            c.to_digit(10)
                .ok_or_else(|| format!("`{c}` is not a digit"))?,
        );
    }
    Ok(())
}

/// Filter: `Result<bool, E>`.
#[exactly::operator]
fn positive(n: &i64) -> Result<bool, Negative> {
    if *n < 0 {
        Err(Negative(*n))
    } else {
        Ok(*n > 0)
    }
}

/// Filter-map: `Result<Option<B>, E>`, with a `BoxError`.
#[exactly::operator]
fn halve(n: u32) -> Result<Option<u32>, exactly::BoxError> {
    if n > 100 {
        return Err("too large".into());
    }
    Ok(n.is_multiple_of(2).then_some(n / 2))
}

fn main() {
    let mut out = Emitter::new();
    parse.process("42".to_owned(), &mut (), &mut out).unwrap();
    let error = parse
        .process("x".to_owned(), &mut (), &mut out)
        .unwrap_err();
    assert_eq!(error.to_string(), "invalid digit found in string");
    assert_eq!(out.take(), vec![42]);

    let mut out = Emitter::new();
    digits.process("12".to_owned(), &mut (), &mut out).unwrap();
    let error = digits
        .process("3a".to_owned(), &mut (), &mut out)
        .unwrap_err();
    assert_eq!(error.to_string(), "`a` is not a digit");
    assert_eq!(out.take(), vec![1, 2, 3]);

    let mut out = Emitter::new();
    positive.process(5, &mut (), &mut out).unwrap();
    positive.process(0, &mut (), &mut out).unwrap();
    let error = positive.process(-1, &mut (), &mut out).unwrap_err();
    assert_eq!(error.to_string(), "-1 is negative");
    assert_eq!(out.take(), vec![5]);

    let mut out = Emitter::new();
    halve.process(4, &mut (), &mut out).unwrap();
    halve.process(3, &mut (), &mut out).unwrap();
    assert!(halve.process(101, &mut (), &mut out).is_err());
    assert_eq!(out.take(), vec![2]);
}
