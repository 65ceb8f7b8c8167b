#[exactly::operator]
async fn fetch(url: String) -> usize {
    url.len()
}

fn main() {}
