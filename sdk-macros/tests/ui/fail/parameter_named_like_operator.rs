#[exactly::operator]
fn total(total: u64) -> u64 {
    total * 2
}

fn main() {}
