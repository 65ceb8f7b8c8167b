use exactly::prelude::*;

#[state]
#[derive(Default)]
struct WordCount {
    count: u64,
}

#[operator]
fn count(word: String, #[state] counts: &mut WordCount, out: &mut Emitter<(String, u64)>) {
    counts.count += 1;
    out.emit((word, counts.count));
}

fn main() {
    let job = Job::new("unkeyed", JobConfig::new());
    job.source(VecSource::new(vec!["a".to_owned()]))
        .operator(count)
        .sink(DiscardSink::new());
}
