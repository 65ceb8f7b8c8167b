#[exactly::state]
#[derive(Default)]
enum Phase {
    #[default]
    Idle,
    Running,
}

fn main() {
    let _ = Phase::Running;
}
