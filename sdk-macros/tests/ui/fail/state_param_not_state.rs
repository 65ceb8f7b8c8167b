use exactly::Emitter;

#[derive(Default)]
struct Count {
    count: u64,
}

#[exactly::operator]
fn count(word: String, #[state] counts: &mut Count, out: &mut Emitter<(String, u64)>) {
    counts.count += 1;
    out.emit((word, counts.count));
}

fn main() {}
