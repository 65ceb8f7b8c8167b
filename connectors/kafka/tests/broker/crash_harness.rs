//! The crash harness in CI: the exactly-once Kafka pipeline killed at
//! least 30 times (every targeted phase at least twice, the rest SIGKILL at
//! random times), with nothing lost and nothing duplicated.

use std::process::Command;

use crate::common::broker;

#[test]
fn the_pipeline_survives_thirty_kills_without_loss_or_duplicates() {
    let broker = broker();
    let output = Command::new(env!("CARGO_BIN_EXE_exactly-crash-harness"))
        .args(["--cycles", "32", "--records", "40000"])
        .env("EXACTLY_KAFKA_BOOTSTRAP", &broker)
        .output()
        .expect("the crash harness runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the crash harness failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let result = stdout
        .lines()
        .rev()
        .find(|l| l.ends_with("duplicated"))
        .unwrap_or_else(|| panic!("no result line:\n{stdout}"));
    eprintln!("{result}");
    assert!(
        result.ends_with("40000 records, 0 lost, 0 duplicated"),
        "{result}"
    );
    let kills: u64 = result
        .trim_start_matches("crash-harness: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the kill count: {result}"));
    assert!(kills >= 30, "only {kills} kills:\n{stdout}");
    assert!(
        !stdout.contains("phases killed fewer than twice"),
        "some phases were not reached twice:\n{stdout}"
    );
}
