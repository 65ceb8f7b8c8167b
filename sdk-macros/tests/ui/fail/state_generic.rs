#[exactly::state]
#[derive(Default)]
struct Latest<T> {
    value: Option<T>,
}

fn main() {}
