//! Checkpoints in S3: a keyed count stops half-way, then a second run,
//! with nothing local from the first (as on a new machine), resumes from
//! the checkpoints in the bucket alone and checks that every key's count
//! came out exactly once.
//!
//! The S3 client is configured from the standard AWS environment. Against
//! the local S3 server the tests use (moto):
//!
//! ```text
//! scripts/s3-up
//! AWS_ENDPOINT_URL=http://127.0.0.1:9401 AWS_ACCESS_KEY_ID=exactly-test \
//!   AWS_SECRET_ACCESS_KEY=exactly-test-secret AWS_REGION=us-east-1 \
//!   cargo run --example s3_checkpoints [s3://bucket/prefix]
//! ```

use std::collections::HashMap;
use std::time::Duration;

use exactly::prelude::*;

#[state]
#[derive(Default)]
struct Count {
    n: u64,
}

/// Counts each key's records; emits `(key, count)`.
#[operator]
fn count(n: u64, #[state] seen: &mut Count) -> (u64, u64) {
    std::thread::sleep(Duration::from_micros(20));
    seen.n += 1;
    (n % 10, seen.n)
}

const RECORDS: u64 = 200_000;

fn job(location: &str, sink: CollectSink<(u64, u64)>) -> Job {
    let config = JobConfig::new()
        .checkpoint_interval(Duration::from_millis(200))
        .checkpoint_dir(location);
    let job = Job::new("s3-checkpoints-example", config);
    job.source(VecSource::new((0..RECORDS).collect::<Vec<_>>()))
        .key_by(|n: &u64| n % 10)
        .operator(count)
        .sink(sink);
    job
}

fn main() -> Result<(), exactly::BoxError> {
    exactly_examples::init_logging();
    let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let location = std::env::args().nth(1).unwrap_or_else(|| {
        format!(
            "s3://exactly-tests/examples/s3-checkpoints-{}",
            unique.as_millis()
        )
    });
    let runtime = tokio::runtime::Runtime::new()?;
    let sink = CollectSink::new();

    runtime.block_on(async {
        let handle = job(&location, sink.clone()).spawn()?;
        while handle.metrics().checkpoints_completed < 2 && !handle.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        handle.stop();
        handle.join().await.map(drop)
    })?;
    println!(
        "first run: stopped after {} of {RECORDS} records; checkpoints in {location}",
        sink.committed().len()
    );

    // A new job object and a new S3 client: only the bucket carries over.
    runtime.block_on(async { job(&location, sink.clone()).spawn()?.join().await })?;

    let mut counts: HashMap<u64, Vec<u64>> = HashMap::new();
    for (key, n) in sink.committed() {
        counts.entry(key).or_default().push(n);
    }
    for (key, mut seen) in counts {
        seen.sort_unstable();
        let expected: Vec<u64> = (1..=RECORDS / 10).collect();
        if seen != expected {
            return Err(format!(
                "key {key}: counts are not 1..={} exactly once",
                RECORDS / 10
            )
            .into());
        }
    }
    println!("second run: resumed from {location}; exactly-once: OK");
    Ok(())
}
