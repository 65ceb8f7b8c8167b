#[exactly::state]
struct Count {
    count: u64,
}

fn main() {}
