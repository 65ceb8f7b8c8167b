#[exactly::operator]
fn length(word: &String) -> usize {
    word.len()
}

fn main() {}
