use std::time::Instant;

#[exactly::state]
#[derive(Default)]
struct Session {
    count: u64,
    started: Option<Instant>,
}

fn main() {}
