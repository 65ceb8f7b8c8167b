#[exactly::operator]
unsafe fn first_byte(line: String) -> u8 {
    unsafe { *line.as_ptr() }
}

fn main() {}
