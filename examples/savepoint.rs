//! Savepoints and rescaling: run a keyed count, take a savepoint while it
//! runs, stop it, then start a new job from the savepoint with a higher
//! parallelism. Keyed state follows its keys to the new subtasks.
//!
//! ```text
//! cargo run --example savepoint
//! ```

use std::time::Duration;

use exactly::prelude::*;

#[state]
#[derive(Default)]
struct Total {
    sum: u64,
}

/// Keeps a running sum per key (the key is `n % 10`).
#[operator]
fn sum(n: u64, #[state] total: &mut Total) -> (u64, u64) {
    std::thread::sleep(Duration::from_micros(20));
    total.sum += n;
    (n % 10, total.sum)
}

fn build(config: JobConfig, parallelism: usize, sink: CollectSink<(u64, u64)>) -> Job {
    let job = Job::new("savepoint-example", config);
    job.source(VecSource::new((1..=100_000u64).collect::<Vec<_>>()))
        .key_by(|n: &u64| n % 10)
        .parallelism(parallelism)
        .operator(sum)
        .sink(sink);
    job
}

fn main() -> Result<(), exactly::BoxError> {
    exactly_examples::init_logging();
    let work = std::env::temp_dir().join("exactly-savepoint-example");
    let _ = std::fs::remove_dir_all(&work);
    let savepoint = work.join("savepoint");
    let runtime = tokio::runtime::Runtime::new()?;

    let first = CollectSink::new();
    let config = JobConfig::new()
        .checkpoint_interval(Duration::from_millis(100))
        .checkpoint_dir(work.join("run-1"));
    runtime.block_on(async {
        let handle = build(config, 2, first.clone()).spawn()?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let path = handle.savepoint(&savepoint).await?;
        println!(
            "savepoint taken at {} after {} records",
            path,
            handle.metrics().records_in
        );
        handle.stop();
        handle.join().await.map(drop)
    })?;

    let second = CollectSink::new();
    let config = JobConfig::new()
        .checkpoint_interval(Duration::from_millis(100))
        .checkpoint_dir(work.join("run-2"))
        .restore_from(&savepoint);
    build(config, 4, second.clone()).run()?;

    let mut finals = [0u64; 10];
    for (key, total) in second.committed() {
        finals[key as usize] = finals[key as usize].max(total);
    }
    let expected: Vec<u64> = (0..10)
        .map(|k| (1..=100_000u64).filter(|n| n % 10 == k).sum())
        .collect();
    println!("restored with parallelism 4; final sums per key: {finals:?}");
    if finals.as_slice() == expected.as_slice() {
        println!("sums match a direct computation");
        Ok(())
    } else {
        Err(format!("expected {expected:?}").into())
    }
}
