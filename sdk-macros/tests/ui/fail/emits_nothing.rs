#[exactly::operator]
fn log(line: String) {
    println!("{line}");
}

fn main() {}
