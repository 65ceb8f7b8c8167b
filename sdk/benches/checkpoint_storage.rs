//! The throughput of a keyed job with its checkpoints in S3 against the
//! same job with its checkpoints on local disk, side by side; see
//! BENCHMARKS.md.
//!
//! ```text
//! scripts/s3-up
//! AWS_ENDPOINT_URL=http://127.0.0.1:9401 AWS_ACCESS_KEY_ID=exactly-test \
//!   AWS_SECRET_ACCESS_KEY=exactly-test-secret AWS_REGION=us-east-1 \
//!   cargo bench -p exactly --bench checkpoint_storage
//! ```
//!
//! Each round runs the job once with checkpoints in a fresh local
//! directory and once with checkpoints under a fresh prefix of
//! `BENCH_S3_URL` (default `s3://exactly-tests/bench`), alternating which
//! goes first, and prints both rates, their ratio, and the checkpoints each
//! completed. The run ends with the median of the ratios. The job: a source
//! of `BENCH_RECORDS` numbers (default 40 million, about ten seconds), keyed by `n %
//! BENCH_KEYS` (default 1 million keys, so that every checkpoint writes
//! about 17 MB of keyed state), a keyed count, a discarding sink; two
//! worker threads; a checkpoint every `BENCH_CHECKPOINT_MS` (default 1000).
//! `BENCH_ROUNDS` sets the number of rounds (default 5).
//!
//! With `BENCH_HOT_KEYS` below `BENCH_KEYS`, the source first counts every
//! key once, then moves through the keys in blocks: `BENCH_HOT_KEYS` keys,
//! each `BENCH_REPEATS` times (default 30), then the next ones; so each
//! incremental checkpoint writes about the keys of the blocks since the
//! previous one. BENCHMARKS.md runs it with 10 M keys, 100 000 hot.
//!
//! Without the S3 environment (`AWS_ENDPOINT_URL` unset), the bench says
//! how to start the local server and fails.

#[path = "shared/settings.rs"]
mod settings;

use std::time::{Duration, Instant};

use exactly::prelude::*;
use settings::{median, setting};

#[state]
#[derive(Default)]
struct Count {
    n: u64,
}

#[operator]
fn count(n: u64, #[state] seen: &mut Count) -> u64 {
    seen.n += 1;
    n
}

/// Runs the job once with its checkpoints at `location`; returns records
/// per second and the checkpoints it completed.
fn run(location: &str, workload: &[u64], interval: Duration) -> (f64, u64) {
    let records = workload.len() as u64;
    let config = JobConfig::new()
        .checkpoint_interval(interval)
        .checkpoint_dir(location)
        .worker_threads(2);
    let job = Job::new("checkpoint-storage-bench", config);
    job.source(VecSource::new(workload.to_vec()))
        .key_by(|key: &u64| *key)
        .operator(count)
        .sink(DiscardSink::new());
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let metrics = runtime
        .block_on(async { job.spawn()?.join().await })
        .unwrap_or_else(|e| panic!("the job with checkpoints at {location} failed: {e}"));
    let elapsed = started.elapsed().as_secs_f64();
    (records as f64 / elapsed, metrics.checkpoints_completed)
}

/// The records' keys: with `hot == keys`, record `i` has key `i % keys`
/// (every key changes in every interval); with fewer hot keys, every key
/// once, then blocks of `hot * repeats` records that each touch the next
/// `hot` keys `repeats` times.
fn workload(records: u64, keys: u64, hot: u64, repeats: u64) -> Vec<u64> {
    if hot >= keys {
        return (0..records).map(|i| i % keys).collect();
    }
    let block = hot * repeats;
    (0..keys)
        .chain((0..records).map(|i| ((i / block) * hot + i % hot) % keys))
        .collect()
}

fn main() {
    if std::env::var_os("AWS_ENDPOINT_URL").is_none() {
        eprintln!(
            "checkpoint_storage bench: AWS_ENDPOINT_URL is not set. Start the local S3 server with \
             `scripts/s3-up` and run with AWS_ENDPOINT_URL=http://127.0.0.1:9401 AWS_ACCESS_KEY_ID=exactly-test \
             AWS_SECRET_ACCESS_KEY=exactly-test-secret AWS_REGION=us-east-1 (or point them at a real bucket)"
        );
        std::process::exit(1);
    }
    let records = setting("BENCH_RECORDS", 40_000_000);
    let keys = setting("BENCH_KEYS", 1_000_000);
    let interval = Duration::from_millis(setting("BENCH_CHECKPOINT_MS", 1000));
    let rounds = setting("BENCH_ROUNDS", 5);
    let hot = setting("BENCH_HOT_KEYS", keys);
    let repeats = setting("BENCH_REPEATS", 30);
    let workload = workload(records, keys, hot, repeats);
    let s3 = std::env::var("BENCH_S3_URL").unwrap_or_else(|_| "s3://exactly-tests/bench".into());
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    println!(
        "checkpoint storage: {} records, {keys} keys ({hot} hot at a time), a checkpoint every {interval:?}, \
         {rounds} rounds; S3 under {s3}/{unique}-*",
        workload.len()
    );
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let local_dir = scratch.path().join(format!("round-{round}"));
        let local = local_dir
            .to_str()
            .expect("a UTF-8 temporary path")
            .to_owned();
        let remote = format!("{s3}/{unique}-{round}");
        let (local_first, s3_first) = (round % 2 == 0, round % 2 == 1);
        let mut local_run = None;
        if local_first {
            local_run = Some(run(&local, &workload, interval));
        }
        let s3_run = run(&remote, &workload, interval);
        if s3_first {
            local_run = Some(run(&local, &workload, interval));
        }
        let (local_rate, local_checkpoints) = local_run.expect("ran");
        let (s3_rate, s3_checkpoints) = s3_run;
        let ratio = s3_rate / local_rate;
        ratios.push(ratio);
        println!(
            "round {}: local {local_rate:.0} records/s ({local_checkpoints} checkpoints), \
             S3 {s3_rate:.0} records/s ({s3_checkpoints} checkpoints), S3/local {ratio:.3}",
            round + 1
        );
    }
    let (min, max) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    println!(
        "S3/local throughput: median {:.3} (min {min:.3}, max {max:.3})",
        median(&ratios)
    );
}
