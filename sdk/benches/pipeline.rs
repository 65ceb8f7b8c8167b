//! Throughput and checkpoint benchmarks; see BENCHMARKS.md.
//!
//! `cargo bench -p exactly --bench pipeline` prints:
//! 1. a word-count pipeline of three operators (normalise, keyed count,
//!    filter) with checkpoints every 100 ms, against the same work as one
//!    hand-written single-threaded loop without checkpoints, alternated
//!    three times in one run so that the ratio is measured side by side;
//! 2. the checkpoint of a keyed state of one million entries, from inside
//!    a running job (duration and size);
//! 3. bincode against postcard on that state: encoded size, encode and
//!    decode throughput.
//!
//! Set `BENCH_WORDS` to change the number of records (default 4 million),
//! and `BENCH_ONLY=throughput` to run only part 1 (for profiling).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use exactly::MetricsSnapshot;
use exactly::codec::Codec;
use exactly::prelude::*;

#[state]
#[derive(Default)]
struct WordCount {
    count: u64,
}

#[operator]
fn normalise(word: String) -> String {
    word.to_lowercase()
}

#[operator]
fn count(word: String, #[state] c: &mut WordCount) -> (String, u64) {
    c.count += 1;
    (word, c.count)
}

#[operator]
fn every_hundredth(update: &(String, u64)) -> bool {
    update.1.is_multiple_of(100)
}

fn words(n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/data/words.txt"
    ))
    .expect("examples/data/words.txt");
    let vocabulary: Vec<&str> = text.split_whitespace().collect();
    vocabulary
        .iter()
        .cycle()
        .take(n)
        .map(|w| (*w).to_owned())
        .collect()
}

/// The same work as the pipeline, by hand: one thread, no checkpoints.
fn hand_written(words: &[String]) -> (Duration, usize) {
    let started = Instant::now();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut kept = 0usize;
    for word in words {
        let word = word.clone().to_lowercase();
        let c = counts.entry(word.clone()).or_default();
        *c += 1;
        let update = (word, *c);
        if update.1.is_multiple_of(100) {
            kept += 1;
        }
        black_box(update);
    }
    (started.elapsed(), kept)
}

fn pipeline(
    words: &[String],
    checkpoints: &std::path::Path,
    threads: usize,
) -> (Duration, MetricsSnapshot) {
    let _ = std::fs::remove_dir_all(checkpoints);
    let config = JobConfig::new()
        .checkpoint_interval(Duration::from_millis(100))
        .checkpoint_dir(checkpoints)
        .restart_strategy(RestartStrategy::none());
    let job = Job::new("bench", config);
    job.source(VecSource::new(words.to_vec()))
        .operator(normalise)
        .key_by(|w: &String| w.clone())
        .operator(count)
        .operator(every_hundredth)
        .sink(DiscardSink::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let metrics = runtime.block_on(async { job.spawn().unwrap().join().await.unwrap() });
    (started.elapsed(), metrics)
}

/// A job whose keyed state grows to `keys` entries; returns the metrics of
/// its final checkpoint.
fn big_state_checkpoint(keys: u64, checkpoints: &std::path::Path) -> MetricsSnapshot {
    #[operator]
    fn tally(key: u64, #[state] c: &mut WordCount) -> u64 {
        c.count += 1;
        key
    }
    let _ = std::fs::remove_dir_all(checkpoints);
    let job = Job::new(
        "state",
        JobConfig::new()
            .checkpoint_dir(checkpoints)
            .restart_strategy(RestartStrategy::none()),
    );
    job.source(VecSource::new((0..keys).collect::<Vec<_>>()))
        .key_by(|k: &u64| *k)
        .operator(tally)
        .sink(DiscardSink::new());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async { job.spawn().unwrap().join().await.unwrap() })
}

fn mb_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

fn main() {
    let n: usize = std::env::var("BENCH_WORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000_000);
    let dir = tempfile::tempdir().unwrap();
    let input = words(n);
    println!("## Keyed word count, {n} records, 3 operators, checkpoints every 100 ms\n");
    println!(
        "| round | hand-written loop (1 thread) | pipeline, 2 worker threads | ratio | pipeline, 1 worker thread | ratio | checkpoints (2 / 1 threads) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let (mut two, mut one) = (Vec::new(), Vec::new());
    for round in 1..=3 {
        let (hand, kept) = hand_written(&input);
        let (piped, metrics) = pipeline(&input, &dir.path().join("pipeline"), 2);
        let (single, single_metrics) = pipeline(&input, &dir.path().join("pipeline"), 1);
        black_box(kept);
        let rate = |took: Duration| n as f64 / took.as_secs_f64();
        let (hand_rate, pipe_rate, single_rate) = (rate(hand), rate(piped), rate(single));
        two.push(pipe_rate / hand_rate);
        one.push(single_rate / hand_rate);
        println!(
            "| {round} | {:.2} M rec/s | {:.2} M rec/s | {:.0} % | {:.2} M rec/s | {:.0} % | {} / {} |",
            hand_rate / 1e6,
            pipe_rate / 1e6,
            100.0 * pipe_rate / hand_rate,
            single_rate / 1e6,
            100.0 * single_rate / hand_rate,
            metrics.checkpoints_completed,
            single_metrics.checkpoints_completed
        );
    }
    two.sort_by(f64::total_cmp);
    one.sort_by(f64::total_cmp);
    println!(
        "\nmedian ratio to the hand-written loop: {:.0} % with 2 worker threads, {:.0} % with 1\n",
        100.0 * two[1],
        100.0 * one[1]
    );

    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "throughput") {
        return;
    }
    let keys = 1_000_000u64;
    println!("## Checkpoint of a keyed state of {keys} entries\n");
    let metrics = big_state_checkpoint(keys, &dir.path().join("state"));
    println!(
        "final checkpoint: {:.1} ms, {:.1} MB of state files, {:.0} MB/s (trigger to durable metadata, incl. fsync)\n",
        metrics.last_checkpoint_micros as f64 / 1000.0,
        metrics.last_checkpoint_bytes as f64 / 1e6,
        metrics.last_checkpoint_bytes as f64 / metrics.last_checkpoint_micros as f64
    );

    println!("## Codecs on that state (HashMap<u64, (WordCount,)>, {keys} entries)\n");
    println!("| codec | size | encode | decode |");
    println!("|---|---|---|---|");
    let state: HashMap<u64, (WordCount,)> = (0..keys)
        .map(|k| (k, (WordCount { count: k % 1000 },)))
        .collect();
    for codec in [Codec::Bincode, Codec::Postcard] {
        let mut best = (Duration::MAX, Duration::MAX, 0);
        for _ in 0..3 {
            let started = Instant::now();
            let bytes = codec.encode(&state, "state").unwrap();
            let encoded = started.elapsed();
            let started = Instant::now();
            let back: HashMap<u64, (WordCount,)> = codec.decode(&bytes, "state").unwrap();
            let decoded = started.elapsed();
            assert_eq!(back.len(), state.len());
            best = (best.0.min(encoded), best.1.min(decoded), bytes.len());
        }
        println!(
            "| {codec:?} | {:.1} MB | {:.0} MB/s ({:.1} ms) | {:.0} MB/s ({:.1} ms) |",
            best.2 as f64 / 1e6,
            mb_per_s(best.2, best.0),
            best.0.as_secs_f64() * 1e3,
            mb_per_s(best.2, best.1),
            best.1.as_secs_f64() * 1e3
        );
    }
}
