#[exactly::operator]
fn join(left: String, right: String) -> String {
    left + &right
}

fn main() {}
