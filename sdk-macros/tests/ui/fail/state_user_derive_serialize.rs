#[exactly::state]
#[derive(Default, Debug, serde::Serialize)]
struct Count {
    count: u64,
}

fn main() {
    println!("{:?}", Count::default());
}
