use exactly::Emitter;

#[exactly::state]
#[derive(Default)]
struct Count {
    count: u64,
}

#[exactly::operator]
fn count(word: String, #[state] counts: &Count, out: &mut Emitter<(String, u64)>) {
    out.emit((word, counts.count));
}

fn main() {}
