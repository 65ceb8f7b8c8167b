#[exactly::state(durable)]
#[derive(Default)]
struct Count {
    count: u64,
}

fn main() {}
