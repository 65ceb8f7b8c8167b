#[exactly::operator(parallelism = 4)]
fn double(n: u64) -> u64 {
    n * 2
}

fn main() {}
