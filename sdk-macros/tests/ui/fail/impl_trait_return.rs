#[exactly::operator]
fn words(line: String) -> impl Iterator<Item = String> {
    line.split_whitespace()
        .map(str::to_owned)
        .collect::<Vec<_>>()
        .into_iter()
}

fn main() {}
