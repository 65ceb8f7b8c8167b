use exactly::Emitter;

#[exactly::state]
#[derive(Default)]
struct Count {
    count: u64,
}

// Three independent mistakes, all reported in one build.
#[exactly::operator(nmae = "counter")]
async fn count(word: String, #[state] counts: Count, out: &mut Emitter<(String, u64)>) {
    out.emit((word, counts.count));
}

fn main() {}
