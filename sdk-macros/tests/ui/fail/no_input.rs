use exactly::Emitter;

#[exactly::operator]
fn tick(out: &mut Emitter<u64>) {
    out.emit(1);
}

fn main() {}
