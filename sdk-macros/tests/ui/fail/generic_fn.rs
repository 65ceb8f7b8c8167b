#[exactly::operator]
fn identity<T: Send + 'static>(record: T) -> T {
    record
}

fn main() {}
