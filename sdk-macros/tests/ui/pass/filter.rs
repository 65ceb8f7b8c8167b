//! `fn f(x: &A) -> bool` emits the input when it returns `true`.

use exactly::{Emitter, Operator};

#[exactly::operator]
fn long_words(word: &String) -> bool {
    word.len() > 3
}

fn main() {
    assert!(long_words::call(&"house".to_owned()));

    let mut out = Emitter::new();
    for word in ["a", "house", "is", "large"] {
        long_words
            .process(word.to_owned(), &mut (), &mut out)
            .unwrap();
    }
    assert_eq!(out.take(), vec!["house".to_owned(), "large".to_owned()]);

    // In and Out are both the referenced type.
    let _: fn(<long_words as Operator>::In) -> <long_words as Operator>::Out = |s: String| s;
}
