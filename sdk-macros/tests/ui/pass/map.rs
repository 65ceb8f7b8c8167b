//! `fn f(x: A) -> B` emits the returned value.

use exactly::{Emitter, Operator, UnkeyedOperator};

/// The length of a word.
#[exactly::operator]
pub fn length(word: String) -> usize {
    word.len()
}

fn assert_unkeyed<O: UnkeyedOperator>(_: O) {}

fn main() {
    assert_eq!(length::call("four".to_owned()), 4);

    let mut out = Emitter::new();
    length
        .process("hello".to_owned(), &mut (), &mut out)
        .unwrap();
    assert_eq!(out.take(), vec![5]);

    assert_eq!(<length as Operator>::NAME, "length");
    assert!(<length as Operator>::STATE_NAMES.is_empty());
    assert_unkeyed(length);
    let copied: length = length;
    assert_eq!(format!("{copied:?}"), "length");
    assert_eq!(format!("{:?}", <length as Default>::default()), "length");
}
