//! What incremental keyed-state checkpoints write and what a restore after
//! many of them reads, against full snapshots of the same state, on local
//! disk and in S3; see BENCHMARKS.md.
//!
//! ```text
//! cargo bench -p exactly --bench incremental                 # local disk only
//! scripts/s3-up
//! AWS_ENDPOINT_URL=http://127.0.0.1:9401 AWS_ACCESS_KEY_ID=exactly-test \
//!   AWS_SECRET_ACCESS_KEY=exactly-test-secret AWS_REGION=us-east-1 \
//!   cargo bench -p exactly --bench incremental                 # local disk, then S3
//! ```
//!
//! One subtask's keyed counts go through the runtime's own snapshot code
//! (`exactly::__bench::IncrementalCounts`). `BENCH_KEYS` keys (default 10
//! million) are counted once and checkpointed; then, `BENCH_CHECKPOINTS`
//! times (default 100), `BENCH_UPDATED_PERMILLE` per mille of the keys
//! (default 10, 1 %), drawn at random, are counted again and checkpointed,
//! one checkpoint every `BENCH_CHECKPOINT_MS` (default 1000) as in a job.
//! Compactions run in the background as in a job, beyond
//! `BENCH_MAX_DELTAS` deltas (default 4, `JobConfig::max_state_deltas`'s
//! default). The same is done with full snapshots for the
//! comparison (`BENCH_FULL_CHECKPOINTS`, default 5). Then each is restored
//! three times. Printed per store: bytes per checkpoint, checkpoint time
//! (encode, then write and complete), restore time, and the ratios to the
//! full snapshot's, as medians.
//!
//! S3 runs when `AWS_ENDPOINT_URL` is set, under `BENCH_S3_URL` (default
//! `s3://exactly-tests/bench`); otherwise the bench says how to start the
//! local server and measures local disk only.

#[path = "shared/settings.rs"]
mod settings;

use std::time::{Duration, Instant};

use exactly::__bench::{CheckpointWritten, IncrementalCounts, restore_incremental_counts};
use exactly::storage::Location;
use settings::{median, setting};

/// A xorshift generator: the bench's random keys, reproducible.
struct Keys(u64);

impl Keys {
    fn next(&mut self, keys: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % keys
    }
}

struct Settings {
    interval: Duration,
    max_deltas: usize,
    keys: u64,
    updated: u64,
    checkpoints: u64,
    full_checkpoints: u64,
}

/// Counts every key once, then takes `checkpoints` checkpoints after
/// updating `updated` random keys each; returns what each one after the
/// first wrote.
fn checkpoints(location: &Location, incremental: bool, s: &Settings) -> Vec<CheckpointWritten> {
    fn fail<T>(location: &Location) -> impl Fn(exactly::Error) -> T + '_ {
        move |e| panic!("checkpoints at {location}: {e}")
    }
    let mut counts =
        IncrementalCounts::new(location, incremental, s.max_deltas).unwrap_or_else(fail(location));
    counts.update(0..s.keys);
    counts.checkpoint(1).unwrap_or_else(fail(location));
    let mut random = Keys(0x9e37_79b9_7f4a_7c15);
    let rounds = if incremental {
        s.checkpoints
    } else {
        s.full_checkpoints
    };
    let written = (2..=rounds + 1)
        .map(|id| {
            let started = Instant::now();
            counts.update((0..s.updated).map(|_| random.next(s.keys)));
            let written = counts.checkpoint(id).unwrap_or_else(fail(location));
            // As in a job, the next checkpoint comes an interval later; a
            // compaction runs meanwhile.
            std::thread::sleep(s.interval.saturating_sub(started.elapsed()));
            written
        })
        .collect();
    counts.wait_for_compaction();
    written
}

/// Restores the newest checkpoint at `location` three times; the median
/// time.
fn restore(location: &Location, keys: u64) -> Duration {
    let times: Vec<Duration> = (0..3)
        .map(|_| {
            let started = Instant::now();
            let restored = restore_incremental_counts(location)
                .unwrap_or_else(|e| panic!("restore from {location}: {e}"));
            assert_eq!(restored as u64, keys, "restored keys");
            started.elapsed()
        })
        .collect();
    median(&times)
}

fn report(store: &str, root: &Location, s: &Settings) {
    let full_at = root.join("full");
    let incremental_at = root.join("incremental");
    let full = checkpoints(&full_at, false, s);
    let full_restore = restore(&full_at, s.keys);
    let incremental = checkpoints(&incremental_at, true, s);
    let incremental_restore = restore(&incremental_at, s.keys);

    let bytes = |w: &[CheckpointWritten]| {
        median(
            &w.iter()
                .map(|c| c.segment_bytes + c.task_state_bytes)
                .collect::<Vec<_>>(),
        )
    };
    let time = |w: &[CheckpointWritten], f: fn(&CheckpointWritten) -> Duration| {
        median(&w.iter().map(f).collect::<Vec<_>>())
    };
    let (full_bytes, delta_bytes) = (bytes(&full), bytes(&incremental));
    let total: u64 = incremental
        .iter()
        .map(|c| c.segment_bytes + c.task_state_bytes)
        .sum();
    let average = total / incremental.len().max(1) as u64;
    let most = incremental
        .iter()
        .map(|c| c.segment_bytes + c.task_state_bytes)
        .max()
        .unwrap_or(0);
    let longest_chain = incremental.iter().map(|c| c.chain).max().unwrap_or(0);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("{store}:");
    println!(
        "  bytes per checkpoint: full {full_bytes}, incremental median {delta_bytes} ({:.2} % of full), \
         mean {average} with the compacted bases ({:.2} %), largest {most}",
        100.0 * delta_bytes as f64 / full_bytes as f64,
        100.0 * average as f64 / full_bytes as f64
    );
    println!(
        "  checkpoint time, median: full encode {:.1} ms + write {:.1} ms; incremental encode {:.1} ms + write {:.1} ms",
        ms(time(&full, |c| c.encode)),
        ms(time(&full, |c| c.write)),
        ms(time(&incremental, |c| c.encode)),
        ms(time(&incremental, |c| c.write)),
    );
    println!(
        "  restore: full {:.0} ms; after {} incremental checkpoints {:.0} ms ({:.2}x full; a chain of {} segments, \
         at most {longest_chain} during the run)",
        ms(full_restore),
        s.checkpoints,
        ms(incremental_restore),
        incremental_restore.as_secs_f64() / full_restore.as_secs_f64(),
        incremental.last().map_or(0, |c| c.chain),
    );
}

fn main() {
    let keys = setting("BENCH_KEYS", 10_000_000);
    let settings = Settings {
        interval: Duration::from_millis(setting("BENCH_CHECKPOINT_MS", 1000)),
        max_deltas: setting("BENCH_MAX_DELTAS", 4) as usize,
        keys,
        updated: keys * setting("BENCH_UPDATED_PERMILLE", 10) / 1000,
        checkpoints: setting("BENCH_CHECKPOINTS", 100),
        full_checkpoints: setting("BENCH_FULL_CHECKPOINTS", 5),
    };
    println!(
        "incremental checkpoints: {} keys, {} updated per checkpoint, {} incremental and {} full checkpoints, \
         one every {:?}",
        settings.keys,
        settings.updated,
        settings.checkpoints,
        settings.full_checkpoints,
        settings.interval
    );
    // Compactions run on the runtime's blocking pool, as in a job.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _in_runtime = runtime.enter();
    let scratch = tempfile::tempdir().expect("a temporary directory");
    report(
        "local disk",
        &Location::Local(scratch.path().to_path_buf()),
        &settings,
    );
    if std::env::var_os("AWS_ENDPOINT_URL").is_none() {
        println!(
            "S3: not measured, AWS_ENDPOINT_URL is not set. Start the local server with `scripts/s3-up` and run with \
             AWS_ENDPOINT_URL=http://127.0.0.1:9401 AWS_ACCESS_KEY_ID=exactly-test \
             AWS_SECRET_ACCESS_KEY=exactly-test-secret AWS_REGION=us-east-1"
        );
        return;
    }
    let s3 = std::env::var("BENCH_S3_URL").unwrap_or_else(|_| "s3://exactly-tests/bench".into());
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let root = Location::parse(format!("{s3}/incremental-{unique}"))
        .unwrap_or_else(|e| panic!("BENCH_S3_URL: {e}"));
    report(&format!("S3 ({root})"), &root, &settings);
}
