//! A stateful operator with two `#[state]` parameters, interleaved with the
//! other parameters: `State` is the tuple of their types in parameter order.

use exactly::{Emitter, Operator};

#[exactly::state]
#[derive(Default, Debug, PartialEq)]
struct Count {
    count: u64,
}

/// A tuple struct works as state too.
#[exactly::state]
#[derive(Default, Debug, PartialEq)]
struct Longest(String);

#[exactly::operator(name = "word-stats")]
fn stats(
    #[state] counts: &mut Count,
    word: String,
    out: &mut Emitter<(String, u64, usize)>,
    #[state] longest: &mut Longest,
) {
    // A local named like the operator binds as usual.
    let stats = counts.count + 1;
    counts.count = stats;
    if word.len() > longest.0.len() {
        longest.0.clone_from(&word);
    }
    out.emit((word, counts.count, longest.0.len()));
}

fn main() {
    assert_eq!(<stats as Operator>::NAME, "word-stats");
    assert_eq!(<stats as Operator>::STATE_NAMES, ["counts", "longest"]);

    let mut state: <stats as Operator>::State = Default::default();
    let mut out = Emitter::new();
    for word in ["to", "bee", "or"] {
        stats
            .process(word.to_owned(), &mut state, &mut out)
            .unwrap();
    }
    assert_eq!(
        out.take(),
        vec![
            ("to".to_owned(), 1, 2),
            ("bee".to_owned(), 2, 3),
            ("or".to_owned(), 3, 3),
        ]
    );
    let (Count { count }, Longest(longest)) = &state;
    assert_eq!((*count, longest.as_str()), (3, "bee"));

    let mut count = Count::default();
    let mut longest = Longest::default();
    let mut direct = Emitter::new();
    stats::call(&mut count, "x".to_owned(), &mut direct, &mut longest);
    assert_eq!(count, Count { count: 1 });
}
