//! `fn f(x: A) -> Option<B>` emits the value when it returns `Some`.

use exactly::{Emitter, Operator};

#[exactly::operator]
fn parse_number(line: String) -> Option<u64> {
    line.trim().parse().ok()
}

fn main() {
    assert_eq!(parse_number::call(" 7 ".to_owned()), Some(7));

    let mut out = Emitter::new();
    for line in ["1", "x", "22", ""] {
        parse_number
            .process(line.to_owned(), &mut (), &mut out)
            .unwrap();
    }
    assert_eq!(out.take(), vec![1, 22]);
}
