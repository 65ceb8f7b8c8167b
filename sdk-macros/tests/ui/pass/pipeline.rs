//! The macros' output plugs into the pipeline: a stateless operator on an
//! unkeyed stream, then a stateful one after `key_by`.

use exactly::prelude::*;

#[state]
#[derive(Default)]
struct WordCount {
    count: u64,
}

#[operator]
fn split(line: String, out: &mut Emitter<String>) {
    for word in line.split_whitespace() {
        out.emit(word.to_owned());
    }
}

#[operator]
fn count(word: String, #[state] counts: &mut WordCount, out: &mut Emitter<(String, u64)>) {
    counts.count += 1;
    out.emit((word, counts.count));
}

fn main() -> exactly::Result<()> {
    let sink = CollectSink::new();
    let job = Job::new("ui-pipeline", JobConfig::new());
    job.source(VecSource::new(vec![
        "to be or".to_owned(),
        "not to be".to_owned(),
    ]))
    .operator(split)
    .key_by(|word: &String| word.clone())
    .operator(count)
    .sink(sink.clone());
    job.run()?;

    let mut counted = sink.committed();
    counted.sort();
    assert_eq!(
        counted,
        vec![
            ("be".to_owned(), 1),
            ("be".to_owned(), 2),
            ("not".to_owned(), 1),
            ("or".to_owned(), 1),
            ("to".to_owned(), 1),
            ("to".to_owned(), 2),
        ]
    );
    Ok(())
}
