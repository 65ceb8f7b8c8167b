//! Throughput and checkpoint benchmarks; see BENCHMARKS.md.
//!
//! `cargo bench -p exactly --bench pipeline` prints:
//! 1. instructions per record of the word-count pipeline (three operators:
//!    normalise, keyed count, filter; one worker thread) against the same
//!    work as one hand-written single-threaded loop, counted by callgrind;
//! 2. the wall-clock throughput of that pipeline, with checkpoints every
//!    100 ms, against the loop, alternated three times in one run so that
//!    the ratio is measured side by side;
//! 3. the checkpoint of a keyed state of one million entries, from inside
//!    a running job (duration and size);
//! 4. bincode against postcard on that state: encoded size, encode and
//!    decode throughput.
//!
//! Set `BENCH_WORDS` to change the number of records of part 2 (default 4
//! million), `BENCH_ONLY=instructions` to run only part 1,
//! `BENCH_ONLY=throughput` to run only parts 1 and 2, and
//! `BENCH_CALLGRIND_DIR` to keep the callgrind output files of part 1 there
//! (for `callgrind_annotate`). With `--features mimalloc` the bench runs
//! on mimalloc instead of the system allocator.
//!
//! # Instruction counts
//!
//! Wall-clock ratios on a shared two-core machine swing by a quarter from
//! run to run; instruction counts do not. Part 1 re-executes this binary
//! under `valgrind --tool=callgrind` (with [`WORKLOAD_VAR`] naming what to
//! run) and reads the `totals:` line of the output file. That is all the
//! `gungraun`/`iai-callgrind` crates would add here, and they need a runner
//! binary of the matching version installed with `cargo install` and a
//! harness of their own, while this bench must print the instruction counts
//! and the wall-clock rounds in one command. Valgrind is required: without
//! it the bench says how to install it and fails.
//!
//! Each workload runs at [`CALLGRIND_RECORDS`] and at twice that; the
//! difference of the two counts, divided by the difference in records,
//! cancels start-up (process, runtime, job graph, the final checkpoint).
//! Building the input is counted by a workload of its own and subtracted.
//! The pipeline runs without periodic checkpoints there: they are
//! time-driven, so their number would depend on valgrind's slowdown.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use exactly::MetricsSnapshot;
use exactly::codec::Codec;
use exactly::prelude::*;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The global allocator of this build.
const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "the system allocator"
};

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

fn words(n: usize) -> Arc<Vec<String>> {
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
        .collect::<Vec<_>>()
        .into()
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

/// Runs the pipeline over `words` on `threads` worker threads, with a
/// checkpoint every `interval` (or only the final one). The words stay the
/// caller's, as the hand-written loop's do.
fn pipeline(
    words: Arc<Vec<String>>,
    checkpoints: &Path,
    threads: usize,
    interval: Option<Duration>,
) -> (Duration, MetricsSnapshot) {
    let _ = std::fs::remove_dir_all(checkpoints);
    let mut config = JobConfig::new()
        .checkpoint_dir(checkpoints)
        .restart_strategy(RestartStrategy::none());
    if let Some(interval) = interval {
        config = config.checkpoint_interval(interval);
    }
    let job = Job::new("bench", config);
    job.source(VecSource::shared(words))
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

/// Names the workload a callgrind child runs: `setup`, `loop` or
/// `pipeline`.
const WORKLOAD_VAR: &str = "BENCH_CALLGRIND_WORKLOAD";
/// The record count the callgrind child runs at.
const RECORDS_VAR: &str = "BENCH_CALLGRIND_RECORDS";
/// The smaller of the two record counts measured under callgrind.
const CALLGRIND_RECORDS: usize = 200_000;

/// Runs one workload for [`callgrind`]. Every workload creates and
/// removes the checkpoint directory, and frees the input on this thread
/// before removing it, so that they differ only in the work: glibc's
/// allocator consolidates its free lists at the first large allocation
/// after the input is freed, at a cost in proportion to the records.
fn run_workload(workload: &str, records: usize) {
    let dir = tempfile::tempdir().unwrap();
    let input = words(records);
    match workload {
        "setup" => {}
        "loop" => {
            black_box(hand_written(&input));
        }
        "pipeline" => {
            let (_, metrics) = pipeline(Arc::clone(&input), dir.path(), 1, None);
            assert_eq!(metrics.records_in, records as u64);
        }
        other => panic!("unknown {WORKLOAD_VAR} {other:?}"),
    }
    drop(black_box(input));
    drop(dir);
}

/// The instructions `workload` executes at `records` records, counted by
/// callgrind in a child process of this binary. The output file is kept
/// in `dir`.
fn callgrind(dir: &Path, workload: &str, records: usize) -> u64 {
    let out = dir.join(format!("callgrind.out.{workload}.{records}"));
    let exe = std::env::current_exe().expect("the bench binary's path");
    let run = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .env(WORKLOAD_VAR, workload)
        .env(RECORDS_VAR, records.to_string())
        .output()
        .expect("valgrind was found a moment ago");
    assert!(
        run.status.success(),
        "callgrind run of {workload} at {records} records failed: {}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("callgrind output file");
    text.lines()
        .find_map(|line| line.strip_prefix("totals:"))
        .or_else(|| text.lines().find_map(|line| line.strip_prefix("summary:")))
        .and_then(|total| total.trim().parse().ok())
        .unwrap_or_else(|| panic!("no totals line in {}", out.display()))
}

/// Fails the bench, saying how to install valgrind, when it is missing.
fn require_valgrind() {
    let found = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        eprintln!(
            "valgrind is not installed, and this bench counts instructions with callgrind.\n\
             Install it (Debian/Ubuntu: `apt-get install valgrind`; Fedora: `dnf install valgrind`; \
             macOS has no current valgrind: run the bench on Linux), then run the bench again."
        );
        std::process::exit(2);
    }
}

/// Part 1: instructions per record, loop and pipeline, from callgrind.
fn instructions_per_record() {
    require_valgrind();
    let kept = std::env::var_os("BENCH_CALLGRIND_DIR").map(std::path::PathBuf::from);
    let temp = tempfile::tempdir().unwrap();
    let dir = kept.as_deref().unwrap_or(temp.path());
    std::fs::create_dir_all(dir).unwrap();
    let (small, large) = (CALLGRIND_RECORDS, 2 * CALLGRIND_RECORDS);
    println!(
        "## Instructions per record (callgrind; {small} and {large} records, difference; 1 worker thread; {ALLOCATOR})\n"
    );
    let measure = |workload: &str| {
        let (a, b) = (
            callgrind(dir, workload, small),
            callgrind(dir, workload, large),
        );
        (a, b, (b as f64 - a as f64) / (large - small) as f64)
    };
    let setup = measure("setup");
    let hand = measure("loop");
    let piped = measure("pipeline");
    println!("| workload | instructions at {small} | at {large} | per record | net of the input |");
    println!("|---|---|---|---|---|");
    for (name, w) in [
        ("building the input", setup),
        ("hand-written loop", hand),
        ("pipeline, 1 worker thread", piped),
    ] {
        println!(
            "| {name} | {} | {} | {:.0} | {:.0} |",
            w.0,
            w.1,
            w.2,
            w.2 - setup.2
        );
    }
    let (hand, piped) = (hand.2 - setup.2, piped.2 - setup.2);
    println!(
        "\ninstructions per record: hand-written loop {hand:.0}, pipeline {piped:.0}, ratio {:.2}\n",
        piped / hand
    );
    if let Some(kept) = &kept {
        println!("callgrind output files kept in {}\n", kept.display());
    }
}

fn main() {
    if let Ok(workload) = std::env::var(WORKLOAD_VAR) {
        let records = std::env::var(RECORDS_VAR)
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("the record count of a callgrind workload");
        run_workload(&workload, records);
        return;
    }
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    instructions_per_record();
    if only == "instructions" {
        return;
    }
    let n: usize = std::env::var("BENCH_WORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000_000);
    let dir = tempfile::tempdir().unwrap();
    let input = words(n);
    println!(
        "## Keyed word count, {n} records, 3 operators, checkpoints every 100 ms, {ALLOCATOR}\n"
    );
    println!(
        "| round | hand-written loop (1 thread) | pipeline, 2 worker threads | ratio | pipeline, 1 worker thread | ratio | checkpoints (2 / 1 threads) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let (mut two, mut one) = (Vec::new(), Vec::new());
    for round in 1..=3 {
        let (hand, kept) = hand_written(&input);
        let every = Some(Duration::from_millis(100));
        let (piped, metrics) = pipeline(Arc::clone(&input), &dir.path().join("pipeline"), 2, every);
        let (single, single_metrics) =
            pipeline(Arc::clone(&input), &dir.path().join("pipeline"), 1, every);
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

    if only == "throughput" {
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
