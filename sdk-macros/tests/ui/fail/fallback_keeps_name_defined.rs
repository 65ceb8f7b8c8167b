use exactly::prelude::*;

// The one mistake (`async`) is the only error: the operator's name stays
// defined with the types that could be read, so the pipeline below
// reports nothing more.
#[operator]
async fn shout(line: String) -> String {
    line.to_uppercase()
}

fn main() {
    let job = Job::new("fallback", JobConfig::new());
    job.source(VecSource::new(vec!["a".to_owned()]))
        .operator(shout)
        .sink(DiscardSink::new());
}
