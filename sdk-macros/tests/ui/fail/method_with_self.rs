struct Scaler {
    factor: u64,
}

impl Scaler {
    #[exactly::operator]
    fn scale(&self, n: u64) -> u64 {
        n * self.factor
    }
}

fn main() {
    let _ = Scaler { factor: 2 }.scale(1);
}
