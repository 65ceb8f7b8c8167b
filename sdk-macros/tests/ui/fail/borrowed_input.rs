use exactly::Emitter;

#[exactly::operator]
fn count_words(words: Vec<&str>, out: &mut Emitter<usize>) {
    out.emit(words.len());
}

fn main() {}
