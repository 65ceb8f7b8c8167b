//! `fn f(x: A, out: &mut Emitter<B>)` emits through the emitter, and the
//! emitter may come before the input.

use exactly::{Emitter, Operator};

#[exactly::operator]
fn split(out: &mut Emitter<String>, line: String) {
    for word in line.split_whitespace() {
        out.emit(word.to_owned());
    }
}

/// Destructuring the input in the parameter pattern works too.
#[exactly::operator]
fn swap((word, count): (String, u64), out: &mut exactly::operator::Emitter<(u64, String)>) {
    out.emit((count, word));
}

fn main() {
    let mut direct = Emitter::new();
    split::call(&mut direct, "a b".to_owned());
    assert_eq!(direct.emitted(), ["a", "b"]);

    let mut out = Emitter::new();
    split
        .process("to be or not".to_owned(), &mut (), &mut out)
        .unwrap();
    assert_eq!(out.take(), vec!["to", "be", "or", "not"]);

    let mut swapped = Emitter::new();
    swap.process(("x".to_owned(), 2), &mut (), &mut swapped)
        .unwrap();
    assert_eq!(swapped.take(), vec![(2, "x".to_owned())]);
}
