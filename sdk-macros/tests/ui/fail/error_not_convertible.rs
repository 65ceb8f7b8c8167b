#[derive(Debug)]
struct BadLine;

#[exactly::operator]
fn parse(line: String) -> Result<u64, BadLine> {
    line.parse().map_err(|_| BadLine)
}

fn main() {}
