//! Workspace-level test suites for `exactly`; the tests live in `tests/`.
//! This library holds what several suites share: a small keyed job and
//! its exactly-once check.

use std::collections::HashMap;
use std::time::Duration;

use exactly::prelude::*;

/// The number of keys of [`wordcount_like`].
pub const KEYS: u64 = 7;

/// A key's count.
#[state]
#[derive(Default)]
pub struct Count {
    /// Records of the key so far.
    pub n: u64,
}

/// Slows each record down so that a job is still running when the test
/// stops it or takes a savepoint.
#[operator]
pub fn slow(x: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(200));
    x
}

/// Counts each key's records, emitting `(key, count)`.
#[operator]
pub fn count(x: u64, #[state] c: &mut Count) -> (u64, u64) {
    c.n += 1;
    (x % KEYS, c.n)
}

/// source -> slow -> key_by(x % 7) -> count -> sink.
pub fn wordcount_like(
    config: JobConfig,
    records: u64,
    keyed_parallelism: usize,
    sink: CollectSink<(u64, u64)>,
) -> Job {
    let job = Job::new("runtime-test", config);
    job.source(VecSource::new((0..records).collect::<Vec<u64>>()))
        .operator(slow)
        .key_by(|x: &u64| x % KEYS)
        .parallelism(keyed_parallelism)
        .operator(count)
        .sink(sink);
    job
}

/// Every key's updates must be exactly 1..=n, once each.
///
/// # Panics
///
/// When a key's updates are missing or repeated.
pub fn assert_exactly_once(committed: &[(u64, u64)], records: u64) {
    let mut by_key: HashMap<u64, Vec<u64>> = HashMap::new();
    for &(key, n) in committed {
        by_key.entry(key).or_default().push(n);
    }
    for key in 0..KEYS {
        let expected = (0..records).filter(|x| x % KEYS == key).count() as u64;
        let mut seen = by_key.remove(&key).unwrap_or_default();
        seen.sort_unstable();
        assert_eq!(seen, (1..=expected).collect::<Vec<_>>(), "key {key}");
    }
}

/// A two-worker tokio runtime for tests.
///
/// # Panics
///
/// When the runtime cannot start.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Spawns the job, waits for two completed checkpoints, stops it
/// gracefully, and returns how many records it had read.
///
/// # Panics
///
/// When the job fails.
pub fn run_then_stop(job: Job) -> u64 {
    runtime().block_on(async {
        let handle = job.spawn().unwrap();
        while handle.metrics().checkpoints_completed < 2 {
            if handle.is_finished() {
                let ended = handle.join().await;
                panic!("the job ended before its second checkpoint: {ended:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        handle.stop();
        let read = handle.metrics().records_in;
        handle.join().await.unwrap();
        read
    })
}
