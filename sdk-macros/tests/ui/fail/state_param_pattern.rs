use exactly::Emitter;

#[exactly::state]
#[derive(Default)]
struct Count {
    count: u64,
}

#[exactly::operator]
fn count(word: String, #[state] Count { count: n }: &mut Count, out: &mut Emitter<(String, u64)>) {
    *n += 1;
    out.emit((word, *n));
}

fn main() {}
