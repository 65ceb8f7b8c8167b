use exactly::Emitter;

#[exactly::operator]
fn split(line: String, out: &mut Emitter<String>) -> usize {
    let words: Vec<&str> = line.split_whitespace().collect();
    for word in &words {
        out.emit((*word).to_owned());
    }
    words.len()
}

fn main() {}
